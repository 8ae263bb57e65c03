"""Models the quantization tests share, built once per session: a 2-layer Llama with hidden
size 256 (so its rows are whole 256-value k-quant blocks), its ONNX export and quantized
versions.  Imported by the test_quant_* modules (a module cache keeps one copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def llama256(tmp_path_factory) -> Path:
    """HF folder: LlamaForCausalLM, 2 layers, hidden 256, ffn 512, 4 heads, 2 KV heads."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if "hf" not in _BUILT:
        from keishiki.examples import build_tiny_llama

        _BUILT["hf"] = build_tiny_llama(
            tmp_path_factory.mktemp("q") / "llama256", hidden=256, intermediate=512
        )
    return _BUILT["hf"]


@pytest.fixture(scope="session")
def llama256_onnx(llama256, tmp_path_factory) -> Path:
    """The model exported to an ONNX folder (model.onnx, tokenizer, config)."""
    pytest.importorskip("onnxruntime")
    if "onnx" not in _BUILT:
        import keishiki

        out = tmp_path_factory.mktemp("q-onnx") / "llama256-onnx"
        keishiki.convert(llama256, out, to="onnx", quiet=True)
        _BUILT["onnx"] = out
    return _BUILT["onnx"]


@pytest.fixture(scope="session")
def llama256_q8(llama256, tmp_path_factory) -> Path:
    """The model as a q8_0 GGUF."""
    pytest.importorskip("gguf")
    if "q8" not in _BUILT:
        import keishiki

        out = tmp_path_factory.mktemp("q-gguf") / "llama256-q8_0.gguf"
        keishiki.convert(llama256, out, to="gguf", quant="q8_0", quiet=True)
        _BUILT["q8"] = out
    return _BUILT["q8"]
