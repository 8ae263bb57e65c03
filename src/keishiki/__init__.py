"""keishiki (形式, "format"): identify, inspect, scan, convert and run model files in every format.

The public API is re-exported lazily, so ``import keishiki`` loads neither torch, onnx nor
transformers:

>>> import keishiki
>>> info = keishiki.inspect("model.safetensors")
>>> report = keishiki.scan("suspicious.pt")
>>> keishiki.convert("pytorch_model.bin", "model.safetensors", to="safetensors")
>>> llm = keishiki.LLM(model="tiny-llama/"); llm.generate(["hi"], keishiki.SamplingParams())
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_EXPORTS = {
    "inspect": "keishiki.formats",
    "identify": "keishiki.formats",
    "ModelInfo": "keishiki.core.model",
    "TensorInfo": "keishiki.core.tensor",
    "LazyTensor": "keishiki.core.tensor",
    "scan": "keishiki._scan",
    "convert": "keishiki._convert",
    "LLM": "keishiki.runtimes",
    "SamplingParams": "keishiki.runtimes",
    "compare": "keishiki._compare",
    "pull": "keishiki.hub.pull",
    "KeishikiError": "keishiki.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keishiki' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
