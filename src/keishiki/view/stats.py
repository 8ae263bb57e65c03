"""Statistics of one tensor for the view: min/max/mean/std, NaN/inf/zero counts, a histogram.

The page asks for one tensor at a time (``/api/stats``), so a model of any size costs one
tensor's memory.  Bounded work: a tensor whose array would exceed ``max_bytes`` in memory
is refused (the answer says why); above ``max_elements`` the figures come from an evenly
strided sample (every k-th element in storage order), and the answer says so.  Work is
done in float64 chunks, two passes (mean first, then the squared deviations and the
histogram), so a sample never needs more than its own array plus a few MB.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core.model import ModelInfo
from ..errors import InvalidRequest

MAX_BYTES = 1 << 30  # refuse tensors that would need more than 1 GiB in memory
MAX_ELEMENTS = 1 << 24  # exact up to 16M elements, a strided sample above
BINS = 48
CHUNK = 1 << 20  # elements per float64 chunk (8 MB)


def unavailable_reason(model: ModelInfo) -> str | None:
    """Why statistics cannot be computed for ``model`` (None when they can)."""
    if model.tensor_loader is not None:
        return None
    if str(model.path).startswith("hf://"):
        return (
            "a remote hf:// model is described from its file headers (read by range); its "
            "tensor data is not downloaded, so there are no statistics (download it, "
            "e.g. `keishiki pull`, and view the local copy)"
        )
    return f"keishiki cannot read tensor data from {model.format} files"


def memory_bytes(model: ModelInfo, name: str) -> int:
    """Bytes the tensor's array takes once loaded (block-quantized types dequantized to
    float32)."""
    from ..mapping import GGML_QUANT

    info = model.tensor(name)
    return info.numel * 4 if GGML_QUANT.match(info.dtype) else info.nbytes


def tensor_stats(
    model: ModelInfo,
    name: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_elements: int = MAX_ELEMENTS,
    bins: int = BINS,
) -> dict[str, Any]:
    """Statistics of tensor ``name`` of ``model``.

    Returns:
        ``{name, dtype, shape, numel, n_counted, sampled, min, max, mean, std, n_nan,
        n_posinf, n_neginf, n_zero, histogram: {edges, counts} | None}``; ``sampled`` is
        None or ``{"step": k, "n": n}``; min/max/mean/std are over finite values (None when
        there are none).

    Raises:
        InvalidRequest: no such tensor, no tensor loader for the format, a tensor above
            ``max_bytes``, or a dtype without an order (complex) or not numbers (strings).
    """
    from ..mapping import load_array

    reason = unavailable_reason(model)
    if reason is not None:
        raise InvalidRequest(f"no statistics: {reason}")
    try:
        info = model.tensor(name)
    except KeyError:
        raise InvalidRequest(f"no tensor named {name!r} in {model.path}") from None
    need = memory_bytes(model, name)
    if need > max_bytes:
        raise InvalidRequest(
            f"tensor {name!r} needs {_size(need)} in memory; the view "
            f"computes statistics only up to {_size(max_bytes)} per tensor"
        )
    flat = np.asarray(load_array(model, info)).reshape(-1)
    if flat.dtype.kind == "c":
        raise InvalidRequest(f"tensor {name!r} is complex ({flat.dtype}); no order to summarise")
    if flat.dtype.kind in "OSU":  # ONNX string initializers (class labels); ml_dtypes' "V"
        # floats (bfloat16, float8) are numbers
        raise InvalidRequest(f"tensor {name!r} holds {info.dtype} values, not numbers")
    sampled = None
    if flat.size > max_elements:
        step = math.ceil(flat.size / max_elements)
        flat = flat[::step]
        sampled = {"step": step, "n": int(flat.size)}
    out: dict[str, Any] = {
        "name": name,
        "dtype": info.dtype,
        "shape": list(info.shape),
        "numel": info.numel,
        "n_counted": int(flat.size),
        "sampled": sampled,
    }
    out.update(_summarise(flat, bins))
    return out


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _chunks(flat):
    for start in range(0, flat.size, CHUNK):
        yield np.asarray(flat[start : start + CHUNK], dtype=np.float64)


def _summarise(flat, bins: int) -> dict[str, Any]:
    n_nan = n_pos = n_neg = n_zero = n_finite = 0
    lo, hi, total = math.inf, -math.inf, 0.0
    for c in _chunks(flat):
        n_nan += int(np.isnan(c).sum())
        n_pos += int(np.isposinf(c).sum())
        n_neg += int(np.isneginf(c).sum())
        n_zero += int((c == 0).sum())
        finite = c[np.isfinite(c)]
        if finite.size:
            n_finite += finite.size
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            total += float(finite.sum())
    out: dict[str, Any] = {
        "n_nan": n_nan,
        "n_posinf": n_pos,
        "n_neginf": n_neg,
        "n_zero": n_zero,
        "min": None,
        "max": None,
        "mean": None,
        "std": None,
        "histogram": None,
    }
    if not n_finite:
        return out
    mean = total / n_finite
    # np.histogram widens an empty range (all values equal) by 0.5 on each side itself
    edges = np.histogram_bin_edges(np.array([lo, hi]), bins=bins)
    counts = np.zeros(bins, dtype=np.int64)
    squares = 0.0
    for c in _chunks(flat):
        finite = c[np.isfinite(c)]
        squares += float(np.square(finite - mean).sum())
        counts += np.histogram(finite, bins=edges)[0]
    out.update(
        {
            "min": lo,
            "max": hi,
            "mean": mean,
            "std": math.sqrt(squares / n_finite),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }
    )
    return out
