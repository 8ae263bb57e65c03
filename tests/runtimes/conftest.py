"""Fixtures of the runtime tests: the tiny Llama exported once per session to ONNX (KV cache),
TorchScript (logits only) and TorchScript (KV cache), and one loaded LLM per backend."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

PROMPTS = ["初めまして、こんにちは", "Hello, world! keishiki reads", "The quick brown fox"]


@pytest.fixture(scope="session")
def tiny_onnx(tiny_llama, tmp_path_factory) -> Path:
    """``keishiki.convert`` ONNX export of the tiny Llama (folder: model.onnx + tokenizer)."""
    pytest.importorskip("onnx")
    from keishiki._convert.onnx_export import export_causal_lm

    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_causal_lm(tiny_llama, out)
    return out


def _torchscript(tiny_llama, tmp_path_factory, method: str) -> Path:
    from keishiki._convert.torchscript_export import export_torchscript

    out = tmp_path_factory.mktemp("ts") / f"tiny-{method}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_torchscript(tiny_llama, out, method=method)
    return out


@pytest.fixture(scope="session")
def tiny_ts(tiny_llama, tmp_path_factory) -> Path:
    """Traced ``model(ids)[0]`` (no cache, no mask): folder with model.pt + tokenizer."""
    return _torchscript(tiny_llama, tmp_path_factory, "trace")


@pytest.fixture(scope="session")
def tiny_ts_kv(tiny_llama, tmp_path_factory) -> Path:
    """Traced flat KV-cache interface: folder with model.pt + tokenizer."""
    return _torchscript(tiny_llama, tmp_path_factory, "trace-kv")


@pytest.fixture(scope="session")
def llms(tiny_llama, tiny_onnx, tiny_ts, tiny_ts_kv) -> dict:
    """One loaded LLM per backend and layout, keyed by a short name."""
    from keishiki import LLM

    return {
        "torch": LLM(model=tiny_llama),
        "onnxruntime": LLM(model=tiny_onnx),
        "torchscript": LLM(model=tiny_ts / "model.pt", tokenizer=tiny_llama),
        "torchscript-kv": LLM(model=tiny_ts_kv),
    }
