"""Import heavy optional libraries only where they are used, with a helpful error."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependency

# which extra brings which top-level module
EXTRA_OF = {
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "transformers": "hf",
    "tokenizers": "hf",
    "huggingface_hub": "hf",
    "safetensors": "safetensors",
    "gguf": "gguf",
    "h5py": "h5",
    "psutil": "all",
    "netron": "view",
    "vllm": "pip install vllm (in its own environment: it pins its own torch)",
    "jinja2": "hf",
    "fastapi": "serve",
    "uvicorn": "serve",
    "sse_starlette": "serve",
    "prometheus_client": "serve",
}


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` naming the pip extra.

    >>> np = require("numpy")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingDependency(top, extra or EXTRA_OF.get(top, "all"), purpose) from exc


def available(module: str) -> bool:
    """True when ``module`` can be imported (does not import it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
