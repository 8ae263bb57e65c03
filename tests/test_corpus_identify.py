"""Every model in the real-file corpus is identified with the right format id and variant.

The case table is facts.json itself: its ``format`` strings (written by the corpus's
authors, not by keishiki) map onto keishiki's ids below; aux files (test vectors, reference
outputs) are skipped.  Adding a file and its facts to the corpus brings it in here.
"""

from __future__ import annotations

import json

import pytest

from keishiki import inspect
from keishiki.formats import identify
from tests.conftest import FACTS, corpus_path, run_cli

# facts.json "format" -> (keishiki format id, variant)
EXPECTED = {
    "torch7 (binary)": ("torch7", "binary"),
    "torch7 (ascii)": ("torch7", "ascii"),
    "pytorch legacy pickle": ("pytorch", "legacy"),
    "pytorch zip": ("pytorch", "zip"),
    "torchscript": ("torchscript", None),
    "safetensors": ("safetensors", None),
    "hf model directory": ("hf-model", None),
    "hf model directory (flax weights)": ("hf-model", None),
    "hf model directory (sentence-transformers)": ("hf-model", None),
    "flax msgpack": ("flax-msgpack", None),
    "onnx": ("onnx", "embedded"),
    "onnx (external data)": ("onnx", "external-data"),
    "gguf": ("gguf", None),
    "keras h5": ("keras-h5", None),
    "keras v3 (.keras zip)": ("keras", None),
    "numpy npz": ("numpy", "npz"),
    "npz (aux)": ("numpy", "npz"),
    "tflite": ("tflite", None),
    "tensorflow savedmodel directory": ("tensorflow-savedmodel", None),
    "coreml mlpackage directory": ("coreml", None),
}

CASES = sorted(k for k, v in FACTS.items() if v.get("format") in EXPECTED)


def test_case_table_covers_every_model_format():
    unknown = {v.get("format") for v in FACTS.values()} - set(EXPECTED)
    assert all("aux" in f for f in unknown), unknown


@pytest.mark.parametrize("rel", CASES)
def test_identified(rel):
    fmt, variant = EXPECTED[FACTS[rel]["format"]]
    match = identify(corpus_path(rel))
    assert match.format == fmt
    if variant is not None:
        assert match.variant == variant


@pytest.mark.parametrize("rel", CASES)
def test_info_json_never_fails(rel):
    path = corpus_path(rel)
    code, out, err = run_cli("info", path, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == EXPECTED[FACTS[rel]["format"]][0]
    assert data["file_size"] > 0
    # transient tensors (a Lua nn module's last output, gradients) and ONNX graph constants
    # are listed, not counted
    from keishiki.core.model import is_parameter

    assert data["n_parameters"] == sum(
        __import__("math").prod(t.shape) for t in inspect(path).tensors if is_parameter(t)
    )


@pytest.mark.parametrize(
    "rel", [k for k in CASES if "tensor_count" in FACTS[k] and FACTS[k]["format"] not in ("gguf",)]
)
def test_tensor_count(rel):
    assert inspect(corpus_path(rel)).n_tensors == FACTS[rel]["tensor_count"]


def test_export_folder_is_its_archive(tiny_llama, tmp_path):
    """A folder holding one TorchScript archive beside config/tokenizer (what `convert --to
    torchscript` writes) is that archive, not an empty hf-model."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x)

    folder = tmp_path / "export"
    folder.mkdir()
    torch.jit.save(torch.jit.script(Net()), folder / "model.pt")
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((tiny_llama / name).read_bytes())
    match = identify(folder)
    assert (match.format, match.member) == ("torchscript", "model.pt")
    info = inspect(folder)
    assert info.format == "torchscript" and info.n_tensors == 2 and info.n_parameters == 15


def test_rejected_file_still_names_its_danger(tmp_path):
    """A truncated payload is corrupt for keishiki but would still run in a lax loader."""
    import zipfile

    path = tmp_path / "trunc.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(
            "archive/data.pkl", b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02R"
        )
        zf.writestr("archive/version", "3\n")
    code, _, err = run_cli("info", path)
    assert code == 2 and "truncated" in err and "DANGEROUS (os.system)" in err
    assert err.count("\n") == 1


def test_near_misses_say_what_is_broken(tmp_path):
    """An interrupted download (zip without its central directory) and a model folder whose
    config.json does not parse are named as broken, not as 'not a model file'."""
    import zipfile

    full = tmp_path / "m.pt"
    with zipfile.ZipFile(full, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 100)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    code, _, err = run_cli("info", cut)
    assert code == 2 and "broken zip archive" in err
    folder = tmp_path / "badcfg"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama",')
    (folder / "model.safetensors").write_bytes(b"x")
    code, _, err = run_cli("info", folder)
    assert code == 2 and "config.json" in err and "invalid JSON" in err
    plain = tmp_path / "notes.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("readme.txt", "hello")
    code, _, err = run_cli("info", plain)
    assert code == 2 and "not a model file" in err


def test_optimum_style_folder_is_its_merged_decoder(tmp_path):
    """An optimum decoder export holds several graphs beside config/tokenizer: the folder is
    ONNX, read (and run) through the graph that carries the KV cache."""
    src = corpus_path("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx")
    folder = tmp_path / "optimum"
    folder.mkdir()
    for name in ("decoder_model.onnx", "decoder_model_merged.onnx"):
        (folder / name).write_bytes(src.read_bytes())
    (folder / "config.json").write_text(
        '{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}'
    )
    match = identify(folder)
    assert (match.format, match.member) == ("onnx", "decoder_model_merged.onnx")
    assert inspect(folder).graph["n_nodes"] == 4
