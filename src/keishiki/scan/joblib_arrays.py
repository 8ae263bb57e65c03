"""Step over the array data ``joblib.dump`` writes into the pickle stream, as ``joblib.load``
reads it (joblib/numpy_pickle.py, ``NumpyArrayWrapper.read_array``).

After the BUILD of a ``NumpyArrayWrapper`` joblib reads, from the file directly: for an
object dtype, a nested pickle (its own stream, same ``find_class``); otherwise an optional
alignment pad (one length byte, then that many bytes) and ``prod(shape) * itemsize`` raw
bytes.  The recording unpickler then goes on after them, as joblib's does.
"""

from __future__ import annotations

from typing import Any


def _dtype_of(stand_in: Any) -> tuple[int, bool]:
    """(itemsize, hasobject) of the ``numpy.dtype(...)`` call a wrapper's state names."""
    import numpy as np  # noqa: PLC0415 - only joblib dumps need it

    call = getattr(stand_in, "call", None)
    if call is None or call.callee is None or not call.args or \
            call.callee.qualname not in ("numpy.dtype", "numpy.core.multiarray.dtype"):
        raise ValueError("joblib array wrapper without a numpy dtype")
    spec = call.args[0]
    if not isinstance(spec, str) or len(spec) > 32:
        raise ValueError(f"joblib array dtype {spec!r} is not a dtype string")
    itemsize = np.dtype(spec).itemsize  # a type string: builds a dtype, runs nothing else
    state = getattr(stand_in, "state", None)
    fields = state[4] if isinstance(state, tuple) and len(state) > 4 else None
    hasobject = spec.lstrip("<>|=").startswith("O")
    if isinstance(fields, dict):  # structured dtype: (field dtype, offset) per name
        for value in fields.values():
            if isinstance(value, tuple) and value and _dtype_of(value[0])[1]:
                hasobject = True
    return itemsize, hasobject


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
        inner = _PyReader(reader, unpickler._rec, joblib=True)
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
