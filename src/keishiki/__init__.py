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
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see ("X as X": re-exported); at run time
    # __getattr__ below imports each on first use
    from ._compare import compare as compare
    from ._convert import convert as convert
    from ._scan import scan as scan
    from .core.model import ModelInfo as ModelInfo
    from .core.tensor import LazyTensor as LazyTensor
    from .core.tensor import TensorInfo as TensorInfo
    from .errors import KeishikiError as KeishikiError
    from .formats import identify as identify
    from .hub.pull import pull as pull
    from .inspecting import inspect as inspect
    from .mapping import map_names as map_names
    from .runtimes import LLM as LLM
    from .runtimes import SamplingParams as SamplingParams

# public name -> module that defines it (imported on first use)
_EXPORTS = {
    "inspect": "keishiki.inspecting",
    "identify": "keishiki.formats",
    "ModelInfo": "keishiki.core.model",
    "TensorInfo": "keishiki.core.tensor",
    "LazyTensor": "keishiki.core.tensor",
    "scan": "keishiki._scan",
    "convert": "keishiki._convert",
    "LLM": "keishiki.runtimes",
    "SamplingParams": "keishiki.runtimes",
    "compare": "keishiki._compare",
    "map_names": "keishiki.mapping",
    "pull": "keishiki.hub.pull",
    "KeishikiError": "keishiki.errors",
}

__all__ = sorted(_EXPORTS)


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name is an error there

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'keishiki' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
