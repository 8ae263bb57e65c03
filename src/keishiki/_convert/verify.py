"""Read-back verification for weight edges: every tensor compared with what was meant to be written.

The output is opened with the target format's reference library (``safetensors.safe_open``,
``torch.load(weights_only=True, mmap=True)``, ``gguf.GGUFReader``) — never with keishiki's own
reader, so a bug shared by keishiki's writer and reader cannot hide.  Each tensor is compared
bit for bit with the expected array (the source tensor, cast when ``--dtype`` asked for it);
names, dtypes and shapes are checked; the largest difference from the *original* values is
reported so a dtype change shows its rounding.  Run-both verification of graph edges lives
with the graph edges.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from ..core import dtypes

T = TypeVar("T")
CHUNK = 1 << 22  # elements per chunk when measuring differences (bounded temporary memory)
MAX_LISTED = 10  # names listed per kind of problem in the report


class ReadBack:
    """Accumulates per-tensor comparisons into the ``StepReport.verify`` dict.

    >>> rb = ReadBack(); rb.compare("w", expected, got, original=src); rb.result()["passed"]
    """

    def __init__(self, method: str = "read-back", library: str = ""):
        self.method = method
        self.library = library
        self.n_compared = 0
        self.n_bit_exact = 0
        self.max_abs_diff = 0.0  # against the original values (shows a dtype change's rounding)
        self.mismatched: list[str] = []
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.problems: list[str] = []
        self.tolerances: dict[str, float] = {}

    def compare(
        self,
        name: str,
        expected: np.ndarray,
        got: np.ndarray,
        original: np.ndarray | None = None,
        atol: float | None = None,
    ) -> bool:
        """Compare one tensor: dtype, shape, then bytes (or within ``atol`` when given).

        Args:
            expected: what should have been written (already cast/quantization-free).
            got: what the reference library read back.
            original: the source values before a dtype change, for the reported difference.
            atol: allowed absolute difference (quantized targets); None means bit-exact.
        """
        self.n_compared += 1
        if got.dtype != expected.dtype or tuple(got.shape) != tuple(expected.shape):
            self.mismatched.append(name)
            self.problems.append(
                f"{name}: wrote {expected.dtype}{list(expected.shape)}, read "
                f"back {got.dtype}{list(got.shape)}"
            )
            return False
        exact = bit_equal(expected, got)
        self.n_bit_exact += exact
        # a bit-exact tensor differs by 0 from what was meant: only a dtype change (an
        # ``original``) or a miss has a difference worth the float64 pass
        reference = original if original is not None else expected
        diff = 0.0 if exact and original is None else max_abs_diff(reference, got)
        self.max_abs_diff = max(self.max_abs_diff, diff)
        ok = exact or (atol is not None and diff <= atol)
        if atol is not None:
            self.tolerances[name] = atol
        if not ok:
            self.mismatched.append(name)
            self.problems.append(f"{name}: differs (max abs diff {diff:.3g})")
        return ok

    def compare_rows(
        self, name: str, expected: np.ndarray, rows: "Rows", original: np.ndarray | None = None
    ) -> bool:
        """Like :meth:`compare`, reading the output a block of rows at a time (bounded memory).

        ``original`` (the values before a dtype change) is None when nothing was cast, so a
        bit-exact tensor costs one memcmp-like pass and no float arithmetic.
        """
        self.n_compared += 1
        if rows.dtype != expected.dtype or tuple(rows.shape) != tuple(expected.shape):
            self.mismatched.append(name)
            self.problems.append(
                f"{name}: wrote {expected.dtype}{list(expected.shape)}, read "
                f"back {rows.dtype}{list(rows.shape)}"
            )
            return False
        exact, diff = True, 0.0
        for start, stop in rows.blocks():
            got = rows.read(start, stop)
            want = expected[start:stop] if expected.ndim else expected
            if not bit_equal(want, got):
                exact = False
                diff = max(diff, max_abs_diff(np.asarray(want), got))
            if original is not None:
                base = original[start:stop] if original.ndim else original
                diff = max(diff, max_abs_diff(np.asarray(base), got))
        self.n_bit_exact += exact
        self.max_abs_diff = max(self.max_abs_diff, diff)
        if not exact:
            self.mismatched.append(name)
            self.problems.append(f"{name}: differs (max abs diff {diff:.3g})")
        return exact

    def count_ok(self, n: int = 1) -> None:
        """Record ``n`` tensors checked elsewhere as equal (aliases of a written tensor)."""
        self.n_compared += n
        self.n_bit_exact += n

    def result(self) -> dict[str, Any]:
        """The verify dict: method, library, passed, counts, max_abs_diff, first problems."""
        passed = not (self.mismatched or self.missing or self.unexpected)
        out: dict[str, Any] = {
            "method": self.method,
            "library": self.library,
            "passed": passed,
            "n_compared": self.n_compared,
            "n_bit_exact": self.n_bit_exact,
            "max_abs_diff": self.max_abs_diff,
            "n_mismatched": len(self.mismatched),
            "missing": self.missing[:MAX_LISTED],
            "unexpected": self.unexpected[:MAX_LISTED],
        }
        if self.tolerances:
            out["max_tolerance"] = max(self.tolerances.values())
        if not passed:
            reasons = self.problems[:3]
            if self.missing:
                reasons.append(
                    f"{len(self.missing)} tensor(s) missing from the output, e.g. {self.missing[0]}"
                )
            if self.unexpected:
                reasons.append(
                    f"{len(self.unexpected)} unexpected tensor(s), e.g. {self.unexpected[0]}"
                )
            out["reason"] = "; ".join(reasons)
        return out


def bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the two arrays hold the same bytes (NaN payloads included)."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    if a.nbytes != b.nbytes:
        return False
    x, y = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    # compared 8 bytes at a time where the buffers allow it: half the time of a byte compare
    wide = x.nbytes - x.nbytes % 8
    if wide and x.ctypes.data % 8 == 0 and y.ctypes.data % 8 == 0:
        if not np.array_equal(x[:wide].view(np.uint64), y[:wide].view(np.uint64)):
            return False
        x, y = x[wide:], y[wide:]
    return bool(np.array_equal(x, y))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| over finite values (float64, chunked); 0.0 for non-numeric dtypes."""
    if a.size == 0 or a.shape != b.shape:
        return 0.0
    if not (_numeric(a.dtype) and _numeric(b.dtype)):
        return 0.0 if bit_equal(a, b) else float("inf")
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    worst = 0.0
    for start in range(0, flat_a.size, CHUNK):
        x = flat_a[start : start + CHUNK].astype(np.float64)
        y = flat_b[start : start + CHUNK].astype(np.float64)
        both_nan = np.isnan(x) & np.isnan(y)
        same_inf = np.isinf(x) & (x == y)
        d = np.abs(x - y)
        d[both_nan | same_inf] = 0.0
        if d.size:
            worst = max(worst, float(np.nanmax(np.where(np.isnan(d), np.inf, d))))
    return worst


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "fiub" or dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def prefetched(loads: Iterable[Callable[[], T]]) -> Iterator[T]:
    """``load()`` of each in turn, the next one already reading on a worker thread while the
    caller compares this one.

    Why: reading a source tensor is one long call that lets go of the GIL (a file read into
    an array), so it overlaps the caller's read-back and compare on a second core; one
    tensor ahead at most, so memory holds two tensors, not the model.
    """
    from concurrent.futures import ThreadPoolExecutor

    pending = iter(loads)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keishiki-prefetch") as pool:
        first = next(pending, None)
        ahead = pool.submit(first) if first is not None else None
        while ahead is not None:
            following = next(pending, None)
            current, ahead = ahead, (pool.submit(following) if following is not None else None)
            yield current.result()


# ---- reference readers ------------------------------------------------------------------------


def torch_to_numpy(tensor) -> np.ndarray:
    """A numpy array of a CPU torch tensor; bfloat16/float8 through their bits and ml_dtypes."""
    import torch

    tensor = tensor.detach()
    special = {
        torch.bfloat16: ("bfloat16", torch.int16),
        getattr(torch, "float8_e4m3fn", None): ("float8_e4m3fn", torch.uint8),
        getattr(torch, "float8_e5m2", None): ("float8_e5m2", torch.uint8),
    }
    if tensor.dtype in special and tensor.dtype is not None:
        name, carrier = special[tensor.dtype]
        return tensor.contiguous().view(carrier).numpy().view(dtypes.to_numpy(name))
    return tensor.numpy()


class Rows:
    """One tensor of a safetensors file, read back a block of rows at a time.

    Each block is read through a fresh ``safe_open``: pages of its memory map count in the
    process's RSS until it is unmapped, so keeping one handle open over a whole file would
    grow RSS to the file's size.
    """

    BLOCK_BYTES = 8 * 1024 * 1024

    def __init__(
        self,
        path: Path,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        framework: str,
        handles: "_Handles | None" = None,
    ):
        self.path, self.name, self.shape, self.dtype = path, name, shape, dtype
        self._framework = framework
        self._handles = handles

    def blocks(self) -> Iterator[tuple[int, int]]:
        """(start, stop) row ranges of about BLOCK_BYTES each ((0, 0) once for a scalar)."""
        if not self.shape or self.shape[0] == 0:
            yield 0, 0
            return
        row_bytes = max(1, int(np.prod(self.shape[1:])) * self.dtype.itemsize)
        step = max(1, self.BLOCK_BYTES // row_bytes)
        for start in range(0, self.shape[0], step):
            yield start, min(self.shape[0], start + step)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._handles is not None:
            fh = self._handles.get(self._framework)
            value = self._get(fh, start, stop)
            self._handles.count(self._framework, value.nbytes if hasattr(value, "nbytes") else 0)
            return value
        from safetensors import safe_open

        with safe_open(str(self.path), framework=self._framework) as fh:
            return self._get(fh, start, stop)

    def _get(self, fh: Any, start: int, stop: int) -> np.ndarray:
        # a zero-element tensor is read whole: safetensors refuses the slice [0:0] of an
        # empty dimension ("index 0 out of bounds"), and every Torch7 module holds some
        whole = not self.shape or 0 in self.shape
        value = fh.get_tensor(self.name) if whole else fh.get_slice(self.name)[start:stop]
        # numpy's framework already returns an array over its own copy of the bytes (a
        # bytearray, not the map): a second copy would only cost time
        return torch_to_numpy(value) if self._framework == "pt" else np.asarray(value)


class _Handles:
    """``safe_open`` handles shared by the :class:`Rows` of one file, one per framework,
    reopened after ``REOPEN_BYTES`` of reads: opening parses the whole header (once per
    tensor was a fifth of the verification on a 256-tensor file), while one handle kept
    over the whole file would let its mapped pages pile up in RSS."""

    REOPEN_BYTES = 8 * 1024 * 1024

    def __init__(self, path: Path):
        self.path = path
        self.handles: dict[str, Any] = {}
        self.read: dict[str, int] = {}

    def get(self, framework: str) -> Any:
        """An open handle for ``framework``."""
        fh = self.handles.get(framework)
        if fh is None or self.read[framework] >= self.REOPEN_BYTES:
            from safetensors import safe_open

            self.close(framework)
            fh = self.handles[framework] = safe_open(str(self.path), framework=framework)
            fh.__enter__()
            self.read[framework] = 0
        return fh

    def count(self, framework: str, nbytes: int) -> None:
        """Record ``nbytes`` read through ``framework``'s handle."""
        self.read[framework] = self.read.get(framework, 0) + nbytes

    def close(self, framework: str | None = None) -> None:
        """Close one handle, or all."""
        for name in [framework] if framework else list(self.handles):
            fh = self.handles.pop(name, None)
            if fh is not None:
                fh.__exit__(None, None, None)


# safetensors' numpy framework cannot return these; torch (imported only then) can
_NEEDS_TORCH = {"BF16", "F8_E4M3", "F8_E5M2"}


def safetensors_names(path: Path) -> tuple[list[str], dict]:
    """(tensor names, ``__metadata__``) as ``safetensors.safe_open`` parses them (no torch)."""
    from .._optional import require

    require("safetensors", extra="safetensors", purpose="verify safetensors output")
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        return list(fh.keys()), fh.metadata() or {}


@contextmanager
def open_safetensors_rows(path: Path) -> Iterator[Callable[[str], Rows]]:
    """``rows(name)`` for a safetensors file read with ``safetensors.safe_open``."""
    from .._optional import available, require

    require("safetensors", extra="safetensors", purpose="verify safetensors output")
    from safetensors import safe_open

    meta = {}
    with safe_open(str(path), framework="np") as fh:
        for name in fh.keys():
            sl = fh.get_slice(name)
            code = sl.get_dtype()
            # numpy is enough for most dtypes, and importing torch costs ~200 MB of RSS
            framework = "pt" if code in _NEEDS_TORCH and available("torch") else "np"
            meta[name] = (
                tuple(int(d) for d in sl.get_shape()),
                dtypes.to_numpy(dtypes.from_safetensors(code)),
                framework,
            )
    handles = _Handles(path)
    try:
        yield lambda name: Rows(path, name, *meta[name], handles=handles)
    finally:
        handles.close()


def load_torch(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True, mmap=True)`` of a torch.save zip (the reference reader)."""
    from .._optional import require

    torch = require("torch", extra="torch", purpose="verify PyTorch output")
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
