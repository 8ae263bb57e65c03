"""`import keishiki` and inspecting non-graph formats load no heavy library."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import corpus_path

HEAVY = ["torch", "onnx", "onnxruntime", "transformers", "tokenizers", "gguf", "h5py", "vllm"]


def _loaded_after(code: str) -> list[str]:
    script = code + f"\nimport sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return __import__("json").loads(out.stdout.strip().splitlines()[-1])


def test_import_keishiki_is_light():
    assert _loaded_after("import keishiki; keishiki.__version__") == []


def test_cli_help_is_light():
    assert _loaded_after("from keishiki.cli.app import _load_commands; _load_commands()") == []


@pytest.mark.parametrize("rel", [
    "safetensors/safetensors-samples/overall.safetensors",
    "pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt",
    "pytorch_legacy/torch-1.13.1-debian/tinynet_state_dict_legacy.pt",
    "torchscript/torch-1.13.1-debian/tinynet_scripted.pt",
    "torch7_binary/python-torchfile/floattensor.t7",
    "other/npz/candle/test.npz",
    "onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx",
])
def test_inspect_loads_no_torch_or_onnx(rel):
    path = corpus_path(rel)
    loaded = _loaded_after(f"import keishiki; keishiki.inspect({str(path)!r})")
    assert not {"torch", "onnx", "onnxruntime", "transformers"} & set(loaded), loaded
