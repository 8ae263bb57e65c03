"""Tensor metadata (:class:`TensorInfo`) and a visible thunk for its data (:class:`LazyTensor`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .display import Shown, View, clip, exact, short_repr, size
from .lazy_numpy import np  # numpy on first use (start-up time)


@dataclass(frozen=True)
class TensorInfo(Shown):
    """What a file says about one tensor, without its bytes.

    Attributes:
        name: the tensor's name in the file's own naming (state_dict key, ONNX initializer...).
        dtype: keishiki dtype name (``float32``, ``bfloat16``, ``q4_0``...).
        shape: dims in row-major (PyTorch) order; formats that store them reversed (GGUF)
            translate at their boundary.
        nbytes: bytes the tensor's data occupies in the file.
        data_offset: absolute offset of the data inside ``file`` where the format has one.
        file: the file (relative to the model path) or zip member holding the data, if not
            the model file itself.
        extra: format-specific facts (storage key, stride, ONNX name meaning, ...).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    data_offset: int | None = None
    file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: name, dtype, shape, nbytes, and offset/file/extra where known."""
        out: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
        }
        if self.data_offset is not None:
            out["data_offset"] = self.data_offset
        if self.file is not None:
            out["file"] = self.file
        if self.extra:
            out.update(self.extra)
        return out

    def __repr__(self) -> str:
        fields: list[tuple[str, object]] = [
            ("name", self.name),
            ("dtype", self.dtype),
            ("shape", self.shape),
            ("nbytes", self.nbytes),
        ]
        if self.file is not None:
            fields.append(("file", self.file))
        return short_repr("TensorInfo", fields)

    def _view(self) -> View:
        fields = [
            ("dtype", self.dtype),
            ("shape", str(list(self.shape))),
            ("elements", f"{self.numel:,}"),
            ("bytes", exact(self.nbytes, size(self.nbytes))),
        ]
        if self.data_offset is not None:
            fields.append(("offset", f"{self.data_offset:,}"))
        if self.file is not None:
            fields.append(("file", self.file))
        fields += [(str(k), clip(v)) for k, v in self.extra.items()]
        return View(f"TensorInfo {self.name}", fields)


@dataclass
class LazyTensor:
    """A tensor whose data is read only when :meth:`load` is called.

    ``load()`` returns a row-major numpy array of ``info.shape`` (bfloat16 and float8 as
    ml_dtypes dtypes; block-quantized GGML types as their raw ``uint8`` blocks).
    """

    info: TensorInfo
    load: Callable[[], np.ndarray]

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"LazyTensor({self.info!r})"
