"""``backend="auto"``: which engine runs what a path holds, and why.

hf-model → vLLM when it is installed and a CUDA GPU is visible, else torch; onnx →
onnxruntime (its CUDA provider when onnxruntime-gpu and a GPU are there); torchscript →
torchscript; gguf → torch, on the model dequantized into a cached Hugging Face folder
(:mod:`keishiki.runtimes.gguf_run`).  Formats that hold weights without an architecture (a state_dict, safetensors,
GGUF...) cannot generate here and are refused with what to do instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .._optional import available
from ..errors import InvalidRequest, PathNotFound

BACKENDS = ("auto", "torch", "onnxruntime", "torchscript", "vllm")
# which format each explicit backend runs
RUNS = {
    "torch": ("hf-model", "gguf"),
    "vllm": ("hf-model",),
    "onnxruntime": ("onnx",),
    "torchscript": ("torchscript",),
}


@dataclass
class Choice:
    """The chosen backend and what it loads.

    Attributes:
        backend: engine name; format: what the path holds; reason: why this backend.
        model_file: the file the engine loads (the folder itself for hf-model).
        folder: the folder beside the model (config.json, tokenizer), if any.
    """

    backend: str
    format: str
    reason: str
    model_file: Path
    folder: Path

    def config(self) -> dict:
        """The folder's config.json as a dict ({} if absent)."""
        try:
            value = json.loads((self.folder / "config.json").read_text())
        except (OSError, ValueError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    def check_sizes(self) -> None:
        """Refuse a Hugging Face folder whose config.json does not state the model's size.

        Raises:
            InvalidRequest: layers, hidden size or vocabulary missing (transformers and vLLM
                would build their default, multi-GB model instead).
        """
        if self.format != "hf-model":
            return
        from ..formats.hf_model import missing_sizes

        missing = missing_sizes(self.config())
        if missing:
            raise InvalidRequest(
                f"{self.folder}: config.json does not give the model's "
                f"{', '.join(missing)}; transformers would build its default "
                f"(multi-GB) model instead of this one"
            )


def detect_format(path: Path) -> str:
    """The format id of ``path`` from :func:`keishiki.formats.identify`, which also reads an
    export folder (``model.onnx`` or one TorchScript ``.pt`` beside the tokenizer and
    config.json) as the format of that file.

    Raises:
        UnknownFormat: keishiki does not recognise it.
    """
    from ..formats import identify

    return identify(path).format


def _onnx_in(folder: Path) -> Path | None:
    from ..formats import ONNX_PREFERRED  # merged/with-past decoders carry the cache

    for name in ONNX_PREFERRED:
        if (folder / name).is_file():
            return folder / name
    files = sorted(folder.glob("*.onnx"))
    return files[0] if len(files) == 1 else None


def _torchscript_in(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    return files[0] if len(files) == 1 else None


def choose(path: str | Path, backend: str = "auto") -> Choice:
    """Pick the engine for ``path``.

    Raises:
        PathNotFound: no such path.
        InvalidRequest: an unknown backend name, a format that cannot generate, or a backend
            that does not run this format.
        UnknownFormat: keishiki does not recognise the file.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise InvalidRequest(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not path.exists():
        raise PathNotFound(path)
    fmt = detect_format(path)
    model_file, folder = _locate(path, fmt)
    if backend == "auto":
        name, reason = _auto(fmt, path)
    elif fmt not in RUNS[backend]:
        raise InvalidRequest(
            f"backend '{backend}' runs {' and '.join(RUNS[backend])} models "
            f"and {path} is "
            f"{fmt}; use backend='auto' or convert it (keishiki convert)"
        )
    else:
        name, reason = backend, "asked for"
    return Choice(name, fmt, reason, model_file, folder)


def _locate(path: Path, fmt: str) -> tuple[Path, Path]:
    if fmt == "hf-model":
        return path, path
    if fmt == "gguf":
        if path.is_dir():  # the folder's one GGUF model (the first file of a split set)
            from ..core.source import Source
            from ..formats.gguf_split import model_file

            with Source(path) as src:
                return model_file(src), path
        return path, path.parent
    if fmt == "onnx":
        file = _onnx_in(path) if path.is_dir() else path
    elif fmt == "torchscript":
        file = _torchscript_in(path) if path.is_dir() else path
    else:
        raise InvalidRequest(
            f"{path}: a {fmt} file cannot generate text (it holds weights without the model's "
            f"architecture); run a Hugging Face folder, an ONNX causal-LM graph, a "
            f"TorchScript LM or a GGUF file"
        )
    if file is None:
        raise InvalidRequest(f"{path}: the folder holds no single {fmt} model file to run")
    return file, path if path.is_dir() else path.parent


def _auto(fmt: str, path: Path) -> tuple[str, str]:
    if fmt == "hf-model":
        if available("vllm"):
            from .vllm_backend import cuda_available

            if cuda_available():
                return "vllm", "auto: Hugging Face folder, vLLM installed and a CUDA GPU visible"
            return "torch", "auto: Hugging Face folder; vLLM is installed but no CUDA GPU"
        return "torch", "auto: Hugging Face folder (vLLM not installed)"
    if fmt == "onnx":
        return "onnxruntime", "auto: ONNX graph"
    if fmt == "torchscript":
        return "torchscript", "auto: TorchScript archive"
    if fmt == "gguf":
        return "torch", (
            "auto: GGUF, dequantized into a Hugging Face folder (keishiki convert "
            "--to hf-model, cached) and run with transformers"
        )
    raise InvalidRequest(f"{path}: a {fmt} file cannot generate text")
