"""pickle: any pickle stream that is not a torch checkpoint (``pickle.dumps``, sklearn, joblib).

Not a model format keishiki converts, but one it must name and scan: loading a pickle runs
whatever callables it references.  The stream is read by the restricted VM only; ``info``
reports the protocol, the globals it references and the type of its root object.

``joblib.dump`` files (variant ``joblib``) interrupt the stream after each
``NumpyArrayWrapper`` with the array's raw bytes (object arrays: a nested pickle), which
``joblib.load`` reads from the file at that point; they are read the same way and the
numeric arrays are listed as tensors named by their place in the object (``coef_``).

The sniffer is strict so that random bytes are never called a pickle: a protocol 2-5 stream
must start with PROTO and parse cleanly as far as the first 64 KiB go; a protocol 0/1
stream (no PROTO opcode) must parse to STOP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core import dtypes
from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.pickle_reader import (
    JOBLIB_WRAPPERS,
    OPCODE_NAMES,
    Call,
    InlineArray,
    PickleRecord,
    read_pickle,
    read_pickles,
    type_name,
)
from ..core.source import HEAD_BYTES, Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from ._torch_pickle import walk_named
from .registry import Match

FORMAT = "pickle"
# first opcodes of protocol 0/1 pickles of ordinary objects: MARK, EMPTY_LIST/DICT/TUPLE,
# GLOBAL, NONE, INT, LONG, FLOAT, STRING, UNICODE, BININT*, BINUNICODE, BINFLOAT, NEWTRUE/FALSE
_P0_STARTS = set(b"(]})cNILFSVJKMXGTU")
_TRUNCATION = ("bytes but only", "before STOP")
MAX_READ_BYTES = 256 * 1024 * 1024
MAX_OPS = 10_000_000  # per stream; bounds a hostile stream to a few seconds


def _head_parses(head: bytes, whole_file: bool) -> PickleRecord | None:
    rec = read_pickle(head, 0, lenient=True, max_ops=20_000)
    if rec.error is not None and any(g.qualname in JOBLIB_WRAPPERS for g in rec.globals):
        rec = read_pickle(head, 0, lenient=True, max_ops=20_000, joblib_arrays=True)
    if rec.error is None:
        return rec if rec.n_ops >= 2 else None
    if not whole_file and any(t in rec.error for t in _TRUNCATION) and rec.n_ops >= 3:
        return rec  # the stream simply continues past the first 64 KiB
    return None


def sniff(src: Source) -> Match | None:
    if src.is_dir or src.looks_like_zip:
        return None
    head = src.head
    if len(head) < 2:
        return None
    whole = src.size <= HEAD_BYTES
    if head[0] == 0x80:
        if head[1] not in (2, 3, 4, 5) or head[2:3] not in OPCODE_NAMES:
            return None
        if _head_parses(head, whole) is None:
            return None
        return Match(FORMAT, None, reason=f"pickle protocol {head[1]} stream")
    if head[0] not in _P0_STARTS:
        return None
    rec = _head_parses(head, whole)
    if rec is None or (
        whole
        and head[rec.end :].strip(b"\0 \r\n\t")
        and rec.error is None
        and head[rec.end : rec.end + 1] not in OPCODE_NAMES
    ):
        return None
    return Match(FORMAT, None, reason="protocol 0/1 pickle stream (parsed to STOP)")


def read(src: Source, match) -> ModelInfo:
    """Protocol, globals and root type of every stream; joblib's inline numpy arrays as tensors."""
    path = str(src.path)
    if src.size == 0:
        raise CorruptFile(path, "empty file")
    # a pickle's metadata cannot be separated from its payload, so the stream is read; very
    # large ones are analysed as far as MAX_READ_BYTES go, leniently, and say so
    data = src.read_at(0, min(src.size, MAX_READ_BYTES))
    partial = src.size > MAX_READ_BYTES
    records = read_pickles(data, path=path, lenient=True, max_ops=MAX_OPS)
    joblib = any(g.qualname in JOBLIB_WRAPPERS for r in records for g in r.globals)
    if joblib:  # joblib.dump writes array bytes inline: read the stream as joblib.load does
        records = read_pickles(
            data, path=path, lenient=partial, max_ops=MAX_OPS, joblib_arrays=True
        )
    elif not partial and records[-1].error is not None:
        raise CorruptFile(path, f"pickle: {records[-1].error}", records[-1].error_offset)
    details = _details(records)
    tensors, arrays = _inline_tensors(records[0], path) if joblib else ([], {})
    if joblib:
        details["joblib"] = True
        details["n_inline_arrays"] = len(records[0].inline_arrays)
    warnings = []
    if partial:
        warnings.append(f"only the first {MAX_READ_BYTES >> 20} MiB of the stream were analysed")
    if details["globals"]:
        warnings.append(
            f"unpickling imports and may call the {len(details['globals'])} "
            f"globals this stream references; `keishiki scan` judges them"
        )
    return ModelInfo(
        path=path,
        format=FORMAT,
        variant="joblib" if joblib else None,
        format_version=str(details["protocol"]),
        tensors=tensors,
        details={FORMAT: details},
        warnings=warnings,
        tensor_loader=_loader(src.path, arrays) if joblib else None,
    )


def _numeric(array: InlineArray) -> np.dtype | None:
    try:
        dtype = np.dtype(array.dtype)
    except (TypeError, ValueError, SyntaxError):
        return None
    return dtype if dtype.kind in "biufc" and array.nested is None else None


def _inline_tensors(
    rec: PickleRecord, path: str
) -> tuple[list[TensorInfo], dict[str, InlineArray]]:
    """joblib's numeric inline arrays, named by their place in the pickled object."""
    by_wrapper = {id(a.wrapper): a for a in rec.inline_arrays if _numeric(a) is not None}

    def leaf(value: Any) -> InlineArray | None:
        return by_wrapper.get(id(value)) if isinstance(value, Call) else None

    tensors, arrays = [], {}
    for name, _value, array in walk_named(rec.value, path, leaf):
        name = name or "array"
        dtype = _numeric(array)
        tensors.append(
            TensorInfo(
                name,
                dtypes.from_numpy(dtype),
                array.shape,
                array.nbytes,
                array.offset,
                extra={"order": array.order},
            )
        )
        arrays[name] = array
    return tensors, arrays


def _loader(path: Path, arrays: dict[str, InlineArray]):
    def load(info: TensorInfo) -> np.ndarray:
        array = arrays[info.name]
        dtype = _numeric(array)
        with open(path, "rb") as fh:
            fh.seek(array.offset)
            buf = fh.read(array.nbytes)
        if len(buf) != array.nbytes:
            raise CorruptFile(path, f"array {info.name!r}: short read", array.offset)
        flat = np.frombuffer(buf, dtype=dtype)
        out = flat.reshape(array.shape[::-1]).T if array.order == "F" else flat.reshape(array.shape)
        out = np.ascontiguousarray(out)
        return out.astype(out.dtype.newbyteorder("=")) if out.dtype.byteorder == ">" else out

    return load


def _details(records: list[PickleRecord]) -> dict[str, Any]:
    first = records[0]
    return {
        "protocol": max(r.protocol for r in records),
        "n_streams": len(records),
        "globals": sorted({g.qualname for r in records for g in r.globals}),
        "calls": sum(len(r.calls) for r in records),
        "root_type": type_name(first.value),
        "stream_bytes": records[-1].end,
        "python2_pickle": any(r.py2_strings for r in records),
    }
