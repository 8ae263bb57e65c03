"""Compare one pair of tensors: bit-for-bit, then by value (max abs / rel difference).

A is the reference: an element is within tolerance when ``|a - b| <= atol + rtol * |a|``
(numpy's ``allclose`` with A in the role of ``b``), NaN equal to NaN.  ``max_rel_diff`` is
``max|a - b| / max|a|``, the same definition the converter's run-both verifier uses, so it stays
finite where A has zeros.  Work happens in chunks of float64 so a large tensor never needs
more than its two arrays (plus one contiguous copy of a transposed view) and a few tens of MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._convert.gguf_names import permute as llama_permute
from .._convert.gguf_names import unpermute as llama_unpermute
from ..errors import InvalidRequest
from ..mapping import TensorPair

CHUNK = 1 << 20  # elements per float64 chunk (8 MB; a few temporaries of this size)


@dataclass
class TensorDiff:
    """How one mapped pair compares.

    ``status`` is ``identical`` (same dtype and bytes), ``equal`` (same values, different
    dtype or layout), ``within tolerance``, ``different`` or ``shape mismatch``.
    """

    pair: TensorPair
    status: str
    bit_equal: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    n_over_tolerance: int = 0
    transform: str | None = None
    notes: list[str] = field(default_factory=list)
    quant_bound: float | None = None  # judged by its GGUF type's bound (no tolerance given)

    @property
    def ok(self) -> bool:
        return self.status in ("identical", "equal", "within tolerance")

    def to_dict(self) -> dict[str, Any]:
        out = self.pair.to_dict()
        out.update(
            {
                "status": self.status,
                "bit_equal": self.bit_equal,
                "dtype_differs": self.pair.a_dtype != self.pair.b_dtype,
                "max_abs_diff": self.max_abs_diff,
                "max_rel_diff": self.max_rel_diff,
                "n_over_tolerance": self.n_over_tolerance,
            }
        )
        if self.transform != self.pair.transform:
            out["transform_applied"] = self.transform
        if self.notes:
            out["notes"] = self.notes
        return out


# ---- transforms --------------------------------------------------------------------------------


def apply_transform(arr: np.ndarray, transform: str | None, extra: dict) -> np.ndarray:
    """B's array lined up with A's (see :class:`keishiki.mapping.TensorPair`)."""
    if transform is None:
        return arr
    if transform == "transpose":
        return arr.T
    if transform in ("subtract-offset", "add-offset"):  # gemma's RMSNorm stored as w + 1
        offset = np.asarray(extra.get("offset", 0.0), dtype=arr.dtype)
        return arr - offset if transform == "subtract-offset" else arr + offset
    n_head = int(extra.get("n_head", 0))
    if n_head <= 0 or arr.ndim < 1 or arr.shape[0] % (2 * n_head):
        return arr  # cannot apply: compare as is, the diff will say whether that was right
    if transform == "llama-rope-permute":
        return llama_permute(arr, n_head)
    if transform == "llama-rope-unpermute":
        return llama_unpermute(arr, n_head)
    raise ValueError(f"unknown transform {transform!r}")


# ---- differences -------------------------------------------------------------------------------


def _as_wide(arr: np.ndarray) -> np.ndarray:
    # integers too: in int64, uint64 values wrap and int64 differences overflow (INT64_MAX
    # against INT64_MIN gave 1); float64 keeps their size, and equality is taken from the
    # arrays themselves (value_diff), so two integers float64 rounds together still differ
    if arr.dtype.kind == "c":
        return arr.astype(np.complex128)
    return arr.astype(np.float64)  # float16/32/64, the ml_dtypes floats, integers, bool


def value_diff(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> tuple[float, float, int]:
    """(max |a-b|, max |a-b| / max |a|, number of elements over ``atol + rtol*|a|``) for two
    arrays of one shape, in float64 chunks; NaN matches NaN, a NaN against a number counts."""
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    max_abs = max_ref = 0.0
    over = 0
    integers = flat_a.dtype.kind in "iub" and flat_b.dtype.kind in "iub"
    for start in range(0, flat_a.size, CHUNK):
        xa = _as_wide(flat_a[start : start + CHUNK])
        xb = _as_wide(flat_b[start : start + CHUNK])
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(xa - xb).astype(np.float64)
            ref = np.abs(xa).astype(np.float64)
        both_nan = np.isnan(ref) & np.isnan(np.abs(xb).astype(np.float64))
        diff[both_nan] = 0.0
        if integers:  # exact (numpy compares int64 with uint64 by value)
            same = flat_a[start : start + CHUNK] == flat_b[start : start + CHUNK]
            np.maximum(diff, 1.0, out=diff, where=~same)  # integers differ by 1 at least
        else:  # equal infinities give inf - inf = nan: they are equal
            same = xa == xb
        diff[same] = 0.0
        bad = np.isnan(diff)
        diff[bad] = np.inf
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            finite_ref = ref[np.isfinite(ref)]
            if finite_ref.size:
                max_ref = max(max_ref, float(finite_ref.max()))
        with np.errstate(invalid="ignore"):
            # an infinite difference (NaN or an infinity against a number, opposite
            # infinities) counts whatever the tolerance, --atol inf included
            within = (diff <= atol + rtol * np.nan_to_num(ref)) & (diff != np.inf)
            over += int(np.count_nonzero(~within))
    max_rel = max_abs / max_ref if max_ref else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, max_rel, over


def check_tolerances(**tolerances: float | None) -> None:
    """Raise :class:`InvalidRequest` unless each tolerance given (by its parameter's name) is
    >= 0 (NaN passed a ``< 0`` test, and then made every comparison fail, or none)."""
    for name, value in tolerances.items():
        if value is not None and not value >= 0:
            raise InvalidRequest(f"`{name}` must be >= 0, got {value}")


def compare_arrays(
    pair: TensorPair,
    a: np.ndarray,
    b: np.ndarray,
    atol: float,
    rtol: float,
    in_out: bool = False,
) -> TensorDiff:
    """Compare A's array with B's (B not yet transformed) for ``pair``.  ``in_out``: a side's
    format may store dense weights as [in, out] (:func:`keishiki.mapping.pairs
    .layouts_differ`), so a square weight that is not equal as it is is also tried
    transposed; between two [out, in] files a transposed square weight is a difference."""
    if pair.transform == "subtract-offset":
        # B = A + offset as the writer computed it (in A's dtype): adding to A reproduces
        # B's bits exactly, where subtracting from B would round |w| < 1 away
        best = compare_arrays(
            replace(pair, transform=None),
            apply_transform(a, "add-offset", pair.extra),
            b,
            atol,
            rtol,
            in_out,
        )
        best.pair, best.transform = pair, pair.transform
        return best
    candidates = [pair.transform]
    if pair.transform and pair.transform.startswith("llama-rope"):
        candidates.append(None)  # a writer that did not permute
    elif in_out and pair.transform is None and a.ndim == 2 and a.shape[0] == a.shape[1]:
        candidates.append("transpose")  # a square MatMul operand kept under the param's name
    best: TensorDiff | None = None
    for transform in candidates:
        diff = _compare_one(pair, a, apply_transform(b, transform, pair.extra), atol, rtol)
        diff.transform = transform
        if best is None or _rank(diff) < _rank(best):
            best = diff
        if diff.ok:
            break
    assert best is not None
    if best.status == "different" and not (atol or rtol):
        _quantization_tolerance(best, a, apply_transform(b, best.transform, pair.extra))
    if best.transform != pair.transform:
        best.notes.append(
            f"matched only with the {best.transform} transform"
            if best.transform
            else f"matched without the {pair.transform} transform"
        )
    return best


def _bytes_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality of two contiguous arrays of one dtype, in chunks."""
    raw_a, raw_b = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    if raw_a.size != raw_b.size:
        return False
    step = CHUNK * 8
    return all(
        np.array_equal(raw_a[i : i + step], raw_b[i : i + step]) for i in range(0, raw_a.size, step)
    )


def _rank(diff: TensorDiff) -> tuple:
    return (not diff.ok, diff.max_abs_diff if diff.max_abs_diff is not None else np.inf)


def _compare_one(
    pair: TensorPair, a: np.ndarray, b: np.ndarray, atol: float, rtol: float
) -> TensorDiff:
    if tuple(a.shape) != tuple(b.shape):
        if a.size == b.size and a.size and pair.how.startswith("value"):
            b = b.reshape(a.shape)  # same bytes, a reshaped view (ONNX folds sometimes)
        else:
            return TensorDiff(
                pair, "shape mismatch", False, notes=[f"shape {list(a.shape)} vs {list(b.shape)}"]
            )
    if a.dtype.kind in _TEXT or b.dtype.kind in _TEXT:
        return _compare_values(pair, a, b)
    # one contiguous copy at most (a transposed view), so chunks below are views, not copies
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    bit_equal = a.dtype == b.dtype and _bytes_equal(a, b)
    if bit_equal:
        return TensorDiff(pair, "identical", True, 0.0, 0.0, 0)
    max_abs, max_rel, over = value_diff(a, b, atol, rtol)
    if max_abs == 0.0:
        status = "equal"
    elif over == 0:
        status = "within tolerance"
    else:
        status = "different"
    return TensorDiff(pair, status, False, max_abs, max_rel, over)


_TEXT = frozenset("OSU")  # objects (ONNX strings), bytes, str; ml_dtypes' floats are "V"


def _compare_values(pair: TensorPair, a: np.ndarray, b: np.ndarray) -> TensorDiff:
    """Arrays of strings (ONNX string initializers, read as objects): equal element by
    element or not; no difference to measure, and no bytes to compare."""
    if a.dtype.kind not in _TEXT or b.dtype.kind not in _TEXT:
        return TensorDiff(pair, "different", False, notes=[f"{a.dtype} vs {b.dtype}"])
    unequal = int(np.count_nonzero(a != b))
    if not unequal:
        return TensorDiff(pair, "identical", True, 0.0, 0.0, 0)
    return TensorDiff(pair, "different", False, n_over_tolerance=unequal)


def _quantization_tolerance(diff: TensorDiff, a: np.ndarray, b: np.ndarray) -> None:
    """A pair whose one side is a GGUF quantized tensor (dtype ``q8_0``, ``q4_k`` ...) and
    no tolerance was asked for: within tolerance when its relative RMS error is within the
    type's bound, the one the converter's read-back uses (:data:`WEIGHT_REL_RMSE`): a q8_0
    GGUF is never bit-equal to its source."""
    from .._convert.gguf_quant import WEIGHT_REL_RMSE, weight_error

    qtype = next(
        (
            str(d).upper()
            for d in (diff.pair.b_dtype, diff.pair.a_dtype)
            if str(d).upper() in WEIGHT_REL_RMSE
        ),
        None,
    )
    if qtype is None or a.shape != b.shape:
        return
    rel = weight_error(a, b)["rel_rmse"]
    bound = diff.quant_bound = WEIGHT_REL_RMSE[qtype]
    if rel <= bound:
        diff.status, diff.n_over_tolerance = "within tolerance", 0
    diff.notes.append(
        f"{qtype}: relative RMS error {rel:.3g} "
        f"{'<=' if rel <= bound else '>'} {bound:g} (quantization-aware tolerance)"
    )
