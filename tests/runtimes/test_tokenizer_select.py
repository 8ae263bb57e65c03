"""The tokenizers-only tokenizer against transformers', and backend selection and refusals."""

from __future__ import annotations

import pytest

from keishiki.errors import InvalidRequest, RuntimeUnavailable, UnknownFormat
from keishiki.runtimes import LLM
from keishiki.runtimes.select import choose
from keishiki.runtimes.tokenizer import Tokenizer, find_tokenizer_dir
from tests.conftest import corpus_path

from .conftest import PROMPTS

NON_LM_ONNX = "onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx"


def test_tokenizer_matches_transformers(tiny_llama):
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer(tiny_llama)
    theirs = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    for text in PROMPTS:
        ids = ours.encode(text)
        assert ids == theirs(text)["input_ids"]
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert ours.render_chat(messages) == theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert (ours.bos_token_id, ours.eos_token_ids, ours.pad_token_id) == (1, [2], 0)


@pytest.mark.parametrize("setting", ["padding", "truncation", "both"])
def test_padding_and_truncation_in_tokenizer_json_are_not_applied(tiny_llama, tmp_path, setting):
    """A tokenizer.json saved with padding to 16 (or truncation to 2) fed [1, 415, 411, 3, 3,
    ...] where transformers feeds [1, 415, 411]: prompts are encoded as vLLM encodes them."""
    import json
    import shutil

    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tok"
    shutil.copytree(tiny_llama, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    if setting in ("padding", "both"):
        data["padding"] = {
            "strategy": {"Fixed": 16},
            "direction": "Right",
            "pad_to_multiple_of": None,
            "pad_id": 0,
            "pad_type_id": 0,
            "pad_token": "<pad>",
        }
    if setting in ("truncation", "both"):
        data["truncation"] = {
            "direction": "Right",
            "max_length": 2,
            "strategy": "LongestFirst",
            "stride": 0,
        }
    (folder / "tokenizer.json").write_text(json.dumps(data))
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer(folder)
    for text in PROMPTS:
        assert ours.encode(text) == theirs(text)["input_ids"] == Tokenizer(tiny_llama).encode(text)


def test_chat_errors(tiny_llama):
    tok = Tokenizer(tiny_llama)
    with pytest.raises(InvalidRequest, match="non-empty list"):
        tok.render_chat([{"content": "no role"}])
    tok.chat_template = None
    with pytest.raises(InvalidRequest, match="no chat template"):
        tok.render_chat([{"role": "user", "content": "x"}])


def test_choose(tiny_llama, tiny_onnx, tiny_ts):
    hf = choose(tiny_llama)
    assert (hf.backend, hf.format) == ("torch", "hf-model")
    assert "vLLM" in hf.reason
    onnx = choose(tiny_onnx)
    assert (onnx.backend, onnx.model_file.name) == ("onnxruntime", "model.onnx")
    assert choose(tiny_onnx / "model.onnx").folder == tiny_onnx
    ts = choose(tiny_ts / "model.pt")
    assert (ts.backend, ts.format) == ("torchscript", "torchscript")


def test_refusals(tiny_llama, tiny_ts, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):  # PathNotFound
        choose(tmp_path / "missing")
    with pytest.raises(InvalidRequest, match="safetensors file cannot generate"):
        choose(tiny_llama / "model.safetensors")
    with pytest.raises(InvalidRequest, match="backend 'onnxruntime' runs onnx models"):
        choose(tiny_llama, "onnxruntime")
    with pytest.raises(InvalidRequest, match="backend must be one of"):
        choose(tiny_llama, "tensorrt")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x01\x02 not a model")
    with pytest.raises(UnknownFormat):
        choose(junk)
    with pytest.raises(RuntimeUnavailable, match="no tokenizer.json"):
        LLM(model=tiny_ts / "model.pt", tokenizer=tmp_path)
    assert find_tokenizer_dir(tiny_ts / "model.pt", None) == tiny_ts


def test_state_dict_cannot_generate(tiny_llama_state_dict, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pt"
    torch.save(dict(tiny_llama_state_dict), path)
    with pytest.raises(InvalidRequest, match="pytorch file cannot generate"):
        choose(path)


def test_non_lm_onnx_graph_is_refused():
    with pytest.raises(InvalidRequest, match="not a causal language model graph"):
        LLM(model=corpus_path(NON_LM_ONNX))


def test_empty_prompts(llms):
    llm = llms["onnxruntime"]
    with pytest.raises(InvalidRequest, match="prompt list is empty"):
        llm.generate([])
    with pytest.raises(InvalidRequest, match="prompt 1 is empty"):
        llm.generate(["ok", ""])
    with pytest.raises(InvalidRequest, match="2 sampling params for 1 prompts"):
        from keishiki.runtimes import SamplingParams

        llm.generate(["ok"], [SamplingParams(), SamplingParams()])
