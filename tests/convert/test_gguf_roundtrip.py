"""HF -> GGUF (f32) -> HF on keishiki's own output: the tokenizer encodes exactly as the
original (BOS included) and the model gives the same logits, for each kind of vocabulary
keishiki writes, whole and split.

Vocabularies: the tiny Llama's byte-level BPE as built (no BOS), the same with a
``TemplateProcessing`` that adds BOS (GGUF pre ``gpt-2``: rebuilt by keishiki), a Llama-3-style
one adding BOS (pre ``llama-bpe``: through transformers' GGUF loader), and a SentencePiece
Llama-2-style one (``llama``: BOS on).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import keishiki
from tests.convert.test_gguf_spm import _llama_folder, spm_bytes, spm_weights  # noqa: F401

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world! The quick brown fox.",
    "digits 0123456789 and 3.14159",
    "emoji 🦙 and ümlauts, naïve façade",
    "tabs\tand\nnew   lines",
    "a",
]


def _with_template(folder: Path, bos: str, split_regex: str | None = None) -> Path:
    """``folder``'s tokenizer.json with a post-processor adding ``bos`` to every text (as
    Llama-3's does), and optionally Llama-3's split regex before its byte-level step."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    bos_id = next(t["id"] for t in data["added_tokens"] if t["content"] == bos)
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos, "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    if split_regex:
        data["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": split_regex},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        }
    path.write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def sources(tiny_llama, spm_weights, spm_bytes, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    from keishiki._convert.gguf_vocab import _LLAMA3_SPLIT

    root = tmp_path_factory.mktemp("roundtrip")
    folders = {"byte-level": tiny_llama}
    for name in ("byte-level-bos", "llama3-bos"):
        shutil.copytree(tiny_llama, root / name)
    folders["byte-level-bos"] = _with_template(root / "byte-level-bos", "<s>")
    folders["llama3-bos"] = _with_template(root / "llama3-bos", "<s>", _LLAMA3_SPLIT)
    folders["sentencepiece"] = _llama_folder(
        spm_weights, root / "spm", spm_bytes, keep_model=True, keep_json=True
    )
    return folders


def _logits(folder: Path, ids: list[int]) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


CASES = [  # (vocabulary, GGUF tokenizer model, pre, BOS added, split options)
    ("byte-level", "gpt2", "gpt-2", False, {}),
    ("byte-level-bos", "gpt2", "gpt-2", True, {}),
    ("byte-level-bos", "gpt2", "gpt-2", True, {"split_max_tensors": 8}),
    ("llama3-bos", "gpt2", "llama-bpe", True, {}),
    ("sentencepiece", "llama", "default", True, {"split_max_size": "20K"}),
]


@pytest.mark.parametrize(
    "kind, model, pre, bos, split", CASES, ids=[f"{c[0]}{'-split' if c[4] else ''}" for c in CASES]
)
def test_hf_gguf_hf_round_trip(sources, tmp_path, kind, model, pre, bos, split):
    src = sources[kind]
    report = keishiki.convert(src, tmp_path / "m.gguf", to="gguf", quant="f32", quiet=True, **split)
    assert report.passed and report.steps[0].verify["tokenizer"]["passed"], report.to_dict()
    files = report.steps[0].details.get("split_files") or ["m.gguf"]
    assert (len(files) > 1) == bool(split)
    kv = {k: f.contents() for k, f in gguf.GGUFReader(str(tmp_path / files[0])).fields.items()}
    assert (kv["tokenizer.ggml.model"], kv.get("tokenizer.ggml.pre", "default")) == (model, pre)
    assert kv.get("tokenizer.ggml.add_bos_token", model == "llama") is bos

    back = keishiki.convert(tmp_path / files[-1], tmp_path / "back", to="hf-model", quiet=True)
    assert back.passed and back.steps[0].verify["tokenizer"]["passed"], back.to_dict()
    original = transformers.AutoTokenizer.from_pretrained(src)
    got = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    want_ids = [original.encode(t) for t in TEXTS]
    assert [got.encode(t) for t in TEXTS] == want_ids
    assert all((ids[0] == original.bos_token_id) is bos for ids in want_ids)
    assert [got.encode(t, add_special_tokens=False) for t in TEXTS] == [
        original.encode(t, add_special_tokens=False) for t in TEXTS
    ]
    for ids in want_ids[:2]:
        np.testing.assert_allclose(
            _logits(tmp_path / "back", ids), _logits(src, ids), atol=1e-5, rtol=0
        )
