"""ModelInfo: the one shared description of what a model file or folder holds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator

from .display import MAX_ROWS, Raw, Shown, View, count, exact, short_repr, size
from .lazy_numpy import np  # numpy on first use (start-up time)
from .tensor import LazyTensor, TensorInfo


def is_parameter(t: TensorInfo) -> bool:
    """Whether ``t`` counts as a model parameter (see :attr:`ModelInfo.n_parameters`)."""
    extra = t.extra or {}
    return not extra.get("transient") and extra.get("source") != "constant"


@dataclass
class ModelInfo(Shown):
    """Everything ``keishiki info`` knows about a model, read without loading weights.

    Format readers fill the common fields and put format-specific facts into
    ``details[<format id>]`` (for example ``details["pytorch"]["kind"] == "state_dict"``);
    :meth:`to_dict` puts each ``details`` section at the top level of the ``--json`` object
    under its own key (``d["pytorch"]["kind"]``), beside the common fields.
    """

    path: str
    format: str
    variant: str | None = None
    format_version: str | None = None
    file_size: int = 0
    tensors: list[TensorInfo] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    graph: dict[str, Any] | None = None
    gguf: dict[str, Any] | None = None
    safety: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # reads one tensor's data on demand; None for formats keishiki only names
    tensor_loader: Callable[[TensorInfo], np.ndarray] | None = field(default=None, repr=False)

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def n_parameters(self) -> int:
        """Sum of the element counts of the model's weights: the listed tensors less transient
        ones (a Lua nn module's gradients and activations, which its PyTorch equivalent does
        not hold) and graph constants (an ONNX Constant node's shape or scalar)."""
        return sum(t.numel for t in self.tensors if is_parameter(t))

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def dtypes(self) -> dict[str, int]:
        """{dtype: number of tensors}, most common first."""
        return dict(Counter(t.dtype for t in self.tensors).most_common())

    def tensor(self, name: str) -> TensorInfo:
        """The tensor called ``name`` (KeyError when absent)."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def lazy_tensors(self) -> Iterator[LazyTensor]:
        """Each tensor as a :class:`LazyTensor`; raises when the format cannot load data."""
        self._loader()
        for info in self.tensors:
            yield LazyTensor(info, partial(self.load_tensor, info))

    def load_tensor(self, info: TensorInfo) -> np.ndarray:
        """Read one tensor's data through the format's loader, checked: a damaged file's
        failure (numpy refusing a shape, an unknown dtype code, a short read) becomes
        CorruptFile naming the tensor, and an array whose shape is not the declared one is
        refused rather than handed to a converter.

        Raises:
            InvalidRequest: the format has no loader.
            CorruptFile: the bytes cannot be the declared tensor.
        """
        from ..errors import CorruptFile, KeishikiError
        from . import dtypes

        loader = self._loader()
        try:
            arr = loader(info)
        except KeishikiError:
            raise
        except (NameError, ImportError, SyntaxError):
            raise  # a bug in keishiki (or a missing library), not a damaged file
        except MemoryError:
            raise CorruptFile(
                self.path, f"tensor {info.name!r}: MemoryError while reading (absurd sizes?)"
            ) from None
        except Exception as exc:  # numpy, zlib, struct... on bytes that lie
            raise CorruptFile(
                self.path, f"tensor {info.name!r}: {type(exc).__name__}: {exc}"
            ) from None
        # block-quantized types come back as raw blocks, whatever their logical shape
        if dtypes.itemsize(info.dtype) is not None and tuple(arr.shape) != tuple(info.shape):
            raise CorruptFile(
                self.path,
                f"tensor {info.name!r}: read {list(arr.shape)}, the "
                f"file declares {list(info.shape)}",
            )
        return arr

    def _loader(self) -> Callable[[TensorInfo], np.ndarray]:
        if self.tensor_loader is None:
            from ..errors import InvalidRequest

            raise InvalidRequest(
                f"{self.path}: keishiki cannot read tensor data from {self.format} files"
            )
        return self.tensor_loader

    def to_dict(self, with_tensors: bool = False) -> dict[str, Any]:
        """The ``info --json`` object (tensors listed only when ``with_tensors``)."""
        out: dict[str, Any] = {
            "path": self.path,
            "format": self.format,
            "variant": self.variant,
            "format_version": self.format_version,
            "file_size": self.file_size,
            "n_tensors": self.n_tensors,
            "n_parameters": self.n_parameters,
            "total_bytes": self.total_bytes,
            "dtypes": self.dtypes,
            "metadata": self.metadata,
            "config": self.config,
            "graph": self.graph,
            "gguf": self.gguf,
            "safety": self.safety,
            "warnings": self.warnings,
        }
        for key, value in self.details.items():
            out.setdefault(key, value)
        if with_tensors:
            out["tensors"] = [t.to_dict() for t in self.tensors]
        return out

    def __repr__(self) -> str:
        fields: list[tuple[str, object]] = [("format", self.format)]
        if self.variant:
            fields.append(("variant", self.variant))
        fields += [
            ("tensors", self.n_tensors),
            ("params", Raw(count(self.n_parameters))),
            ("path", self.path),
        ]
        return short_repr("ModelInfo", fields)

    def _view(self) -> View:
        fmt = self.format + (f" ({self.variant})" if self.variant else "")
        fields = [("format", fmt)]
        if self.format_version:
            fields.append(("format version", self.format_version))
        params = self.n_parameters
        fields += [
            ("file size", size(self.file_size)),
            ("tensors", f"{self.n_tensors:,}"),
            ("parameters", exact(params, count(params))),
            ("tensor bytes", size(self.total_bytes)),
            ("dtypes", ", ".join(f"{d} ×{n}" for d, n in self.dtypes.items())),
        ]
        fields += [("warning", w) for w in self.warnings]
        rows = [
            (t.name, t.dtype, str(list(t.shape)), size(t.nbytes)) for t in self.tensors[:MAX_ROWS]
        ]
        columns = ("tensor", "dtype", "shape", "size") if self.tensors else ()
        return View(f"ModelInfo {self.path}", fields, columns, rows, self.n_tensors)
