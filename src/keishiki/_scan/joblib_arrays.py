"""Step over the array data ``joblib.dump`` writes into the pickle stream, as ``joblib.load``
reads it (joblib/numpy_pickle.py, ``NumpyArrayWrapper.read_array``).

After the BUILD of a ``NumpyArrayWrapper`` joblib reads, from the file directly: for an
object dtype, a nested pickle (its own stream, same ``find_class``); otherwise an optional
alignment pad (one length byte, then that many bytes) and ``prod(shape) * itemsize`` raw
bytes.  The recording unpickler then goes on after them, as joblib's does.
"""

from __future__ import annotations

from typing import Any

MAX_DTYPE_DEPTH = 16


def _dtype_of(stand_in: Any) -> tuple[int, bool]:
    """(itemsize, hasobject) of the dtype a wrapper's state names, as joblib gets it."""
    dtype = _real_dtype(stand_in, 0)
    return dtype.itemsize, dtype.hasobject


def _real_dtype(stand_in: Any, depth: int) -> Any:
    """The ``numpy.dtype`` the loader builds from a recorded ``numpy.dtype(spec, align,
    copy)`` call and its BUILD state: numpy's own constructor and ``__setstate__`` (C code
    that sets fields, itemsize, subarrays; it imports and calls nothing else), so the
    itemsize and ``hasobject`` are the loader's and not a reading of the spec string (a
    ``'V8'`` whose state says 1024 bytes, an ``'object'``, an object subarray).

    Raises:
        ValueError: not a dtype numpy would build from these values.
    """
    import numpy as np  # noqa: PLC0415 - only joblib dumps need it

    if depth > MAX_DTYPE_DEPTH:
        raise ValueError("joblib array dtype nested too deeply")
    call = getattr(stand_in, "call", None)
    if (
        call is None
        or call.callee is None
        or not call.args
        or call.callee.qualname not in ("numpy.dtype", "numpy.core.multiarray.dtype")
    ):
        raise ValueError("joblib array wrapper without a numpy dtype")
    spec, *flags = call.args
    if (
        not isinstance(spec, str)
        or len(spec) > 32
        or not all(isinstance(f, bool) for f in flags[:2])
    ):
        raise ValueError(f"joblib array dtype {spec!r} is not a dtype string")
    try:
        dtype = np.dtype(spec, *flags[:2])
        state = getattr(stand_in, "state", None)
        if state is not None:
            dtype.__setstate__(_realize(state, depth))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"joblib array dtype {spec!r} with its state: {exc}") from None
    return dtype


def _realize(value: Any, depth: int) -> Any:
    """``value`` (a dtype's pickled state) with recorded dtype calls built for real."""
    if getattr(value, "call", None) is not None:
        return _real_dtype(value, depth + 1)
    if isinstance(value, tuple):
        return tuple(_realize(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: _realize(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    raise ValueError(f"joblib array dtype state holds a {type(value).__name__}")


def skip_array(unpickler: Any, wrapper: Any) -> None:
    """Consume the data of the array ``wrapper`` (a stand-in whose state joblib set) from
    the unpickler's reader; raise ValueError when it cannot be read as joblib reads it."""
    from .unpickler import _PyReader  # noqa: PLC0415

    state = wrapper.state if isinstance(wrapper.state, dict) else {}
    shape = state.get("shape")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError("joblib array wrapper without a valid shape")
    itemsize, hasobject = _dtype_of(state.get("dtype"))
    reader = unpickler._rec.reader
    if hasobject:
        # joblib reads an object array with a plain pickle.Unpickler (joblib 1.6,
        # NumpyArrayWrapper.read_array): no array stepping inside it, so none here either
        inner = _PyReader(reader, unpickler._rec, joblib=False)
        inner.load()
        return
    if state.get("numpy_array_alignment_bytes") is not None:
        pad = reader.read_raw(1)
        if pad is None or reader.read_raw(pad[0]) is None:
            raise ValueError("joblib array alignment padding runs past the end")
    count = 1
    for dim in shape:
        count *= dim
    if reader.read_raw(count * itemsize) is None:
        raise ValueError(f"joblib array data ({count * itemsize} bytes) runs past the end")
