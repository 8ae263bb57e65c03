"""Scan pickle streams as their loaders read them: every global and every call, judged
against the allowlist.

Each stream is read by CPython's own unpickler run inertly (:mod:`.unpickler`): what its
``find_class`` saw is what the loader would import, and every such global becomes a
finding.  On top of names, calls are judged where the name alone is not enough: a call of
an object produced at load time (``getattr(...)(...)`` chains), BUILD or item assignment on
a global itself (attribute tampering, modelscan#85), ``_codecs.encode`` / ``copyreg``
helpers with unusual arguments, EXT opcodes (copyreg's registry of the loading process).

Layouts, as loaders read them:
- ``pickle.load`` / ``np.load`` reads one stream from byte 0; a further stream right after
  it is read too (a second ``pickle.load`` on the same file runs it).
- torch's legacy format: five pickles (magic number, protocol, sys_info, main object,
  storage keys), then raw storages skipped by their sizes; bytes after them are read again.
- ``joblib.load`` (the pure-Python unpickler) reads array data inside the stream after
  each ``NumpyArrayWrapper``: a stream naming one is also read that way.
- Where the C unpickler stops on the file's own error, the pure-Python one (joblib, dill)
  reads the same stream as well: the two differ in error handling, so each is judged.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass
from typing import Any

from .allowlist import BIT_GENERATORS, classify
from .findings import FileReport, Finding
from .oplex import BREAKS_AT_START, OPCODE_BYTES
from .unpickler import JOBLIB_WRAPPERS, CallRecord, Global, Result, StreamRecord, Stub, read_stream

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_STREAMS = 100_000  # concatenated streams read from one blob (the time budget binds first)
MAX_REPEATS = 16  # findings per (global, severity) in one blob
MAX_NESTED = 3  # pickles inside call arguments (torch.storage._load_from_bytes)
# callables that unpickle their first (bytes) argument with a full loader
NESTED_LOADERS = frozenset(
    (
        "torch.storage._load_from_bytes",
        "pickle.loads",
        "_pickle.loads",
        "dill.loads",
        "dill._dill.loads",
        "joblib.load",
    )
)
_STORAGE_ITEMSIZE = {
    "Double": 8,
    "Float": 4,
    "Half": 2,
    "BFloat16": 2,
    "Long": 8,
    "Int": 4,
    "Short": 2,
    "Char": 1,
    "Byte": 1,
    "Bool": 1,
    "ComplexDouble": 16,
    "ComplexFloat": 8,
    "QInt8": 1,
    "QUInt8": 1,
    "QInt32": 4,
    "QUInt4x2": 1,
    "QUInt2x4": 1,
    "Untyped": 1,
    "Typed": 1,
}


@dataclass
class Where:
    """Where a stream lives, for findings: the file, the member path, the context."""

    file: str
    member: str = ""
    torchscript: bool = False
    torch_file: bool = False  # persistent ids are expected (torch.save data)
    depth: int = 0  # nesting of pickles inside call arguments


def looks_like_pickle(head: bytes) -> bool:
    """True when ``pickle.load`` would execute at least the first opcode of ``head``: any
    opcode byte can open a stream (no PROTO is needed), and PROTO must name 0-5.  Whether
    the bytes *are* a pickle is decided by parsing them (:func:`scan_blob`)."""
    if not head or head[0] not in OPCODE_BYTES:
        return False
    return head[0] != 0x80 or (len(head) > 1 and head[1] <= 5)


def _finding(
    where: Where, offset: int | None, opcode: str, qualname: str, severity: str, reason: str
) -> Finding:
    return Finding(where.file, where.member, offset, opcode, qualname, severity, reason)


class _Judge:
    """Turns stream records into findings on one report, once per (offset, subject)."""

    def __init__(self, where: Where, report: FileReport, deadline: float):
        self.where, self.report, self.deadline = where, report, deadline
        self.seen: set[tuple] = set()
        self.repeats: dict[tuple[str, str], int] = {}
        self.capped = False  # a limit of the scan stopped a reading (see scan_blob)

    def add(self, offset, opcode, subject, severity, reason) -> None:
        key = (offset, subject, severity)
        if key in self.seen:
            return
        self.seen.add(key)
        # the same subject again at another offset adds nothing after a few: a stream
        # repeating one gadget a million times gives a report, not a million lines
        repeats = self.repeats.get((subject, severity), 0)
        self.repeats[(subject, severity)] = repeats + 1
        if repeats < MAX_REPEATS:
            self.report.add(_finding(self.where, offset, opcode, subject, severity, reason))

    def record(self, rec: StreamRecord, note: str = "") -> None:
        """Findings for every global, EXT opcode, call and failure of ``rec``."""
        for ref in rec.globals:
            severity, reason = self._classify(ref)
            self.add(ref.offset, ref.opcode, ref.qualname, severity, reason + note)
        for offset, code in rec.ext:
            severity, reason = classify("copyreg.extension", str(code))
            self.add(offset, "EXT", f"copyreg.extension.{code}", severity, reason + note)
        for call in rec.calls:
            self._call(call)
        if rec.dynamic:
            self.add(
                rec.error_offset,
                "STACK_GLOBAL",
                "<dynamic>",
                "dangerous",
                "the stream names a global or class computed at load time (a stand-in "
                f"for a call's result reached an import or NEWOBJ: {rec.dynamic}); the "
                "loader would import or build whatever that call returns",
            )
        if not self.where.torch_file and rec.persistent_ids:
            self.add(
                None,
                "BINPERSID",
                "",
                "safe",
                "persistent id outside a torch checkpoint: plain pickle.load refuses it; "
                "a custom loader decides what it means",
            )

    def _classify(self, ref: Global) -> tuple[str, str]:
        torchscript = self.where.torchscript
        severity, reason = classify(ref.module, ref.name, torchscript=torchscript)
        if ref.raw:
            sev2, reason2 = classify(*ref.raw, torchscript=torchscript)
            reason += f" (named {ref.raw[0]}.{ref.raw[1]} in the file)"
            if sev2 == "dangerous" and severity != "dangerous":
                severity, reason = sev2, reason2
        return severity, reason

    def _call(self, call: CallRecord) -> None:
        name = call.callee.qualname if call.callee else "<dynamic>"
        if call.kind == "dynamic":
            what = call.args[0].qualname if call.args else "?"
            self.add(
                call.offset,
                "REDUCE",
                "<dynamic>",
                "dangerous",
                f"calls an object produced at load time (the result of {what}), not a "
                "named global: a getattr/import gadget chain",
            )
        elif call.kind == "build-global":
            self.add(
                call.offset,
                "BUILD",
                name,
                "dangerous",
                f"BUILD sets attributes on the global {name} itself (tampers with module "
                "state; modelscan#85 family)",
            )
        elif call.kind == "mutate-global":
            self.add(
                call.offset,
                "SETITEM",
                name,
                "dangerous",
                f"stores items into the global {name} itself (tampers with module state)",
            )
        elif name == "_codecs.encode":
            args = call.args
            ok = (
                len(args) == 2
                and isinstance(args[0], str)
                and isinstance(args[1], str)
                and args[1].lower().replace("-", "").replace("_", "") in ("latin1", "iso88591")
            )
            if not ok:
                self.add(
                    call.offset,
                    "REDUCE",
                    name,
                    "unknown",
                    "_codecs.encode is allowed only as bytes reconstruction (text, "
                    "'latin1'); called here with other arguments",
                )
        elif name in ("copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"):
            if not call.args or not isinstance(call.args[0], Stub):
                self.add(
                    call.offset,
                    "REDUCE",
                    name,
                    "unknown",
                    f"{name} with a class that is not a named global",
                )
        elif name in _NUMPY_CTORS:
            why = _numpy_ctor_misuse(name, call)
            if why:
                self.add(call.offset, "REDUCE", name, "unknown", why)
        elif name in _RECONSTRUCT:
            sub = call.args[0] if call.args else None
            if not (isinstance(sub, Stub) and sub._global.qualname in _ARRAY_TYPES):
                self.add(
                    call.offset,
                    "REDUCE",
                    name,
                    "unknown",
                    f"{name} builds an array of type {_label(sub)}: only numpy's own "
                    "array types are expected (a subclass runs its own hooks)",
                )
        elif name in NESTED_LOADERS and call.args and isinstance(call.args[0], (bytes, bytearray)):
            self._nested(call, bytes(call.args[0]))

    def _nested(self, call: CallRecord, blob: bytes) -> None:
        """Judge the pickle a nested loader would read from a call's bytes argument."""
        where = self.where
        if where.depth >= MAX_NESTED or not blob or blob[:2] == b"PK":
            return  # the call itself is judged by name; a nested zip is not followed here
        inner = Where(
            where.file,
            f"{where.member}<arg of {call.callee.qualname}@{call.offset}>",
            where.torchscript,
            False,
            where.depth + 1,
        )
        if scan_blob(memoryview(blob), inner, self.report, self.deadline):
            self.capped = True


_NUMPY_CTORS = frozenset(
    (
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__randomstate_ctor",
    )
)
_RECONSTRUCT = frozenset(
    ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
)
_ARRAY_TYPES = frozenset(
    (
        "numpy.ndarray",
        "numpy.ma.core.MaskedArray",
        "numpy.matrix",
        "numpy.matrixlib.defmatrix.matrix",
    )
)


def _label(value: Any) -> str:
    if isinstance(value, Stub):
        return value._global.qualname
    return getattr(value, "qualname", type(value).__name__)


def _numpy_ctor_misuse(name: str, call: CallRecord) -> str:
    """Why a numpy Generator/BitGenerator pickling helper is called with something other
    than what numpy writes ("" when it is what numpy writes): these helpers call the class
    or the constructor they are given."""
    args = list(call.args) + list((call.kwargs or {}).values())
    if name.endswith("__bit_generator_ctor"):
        arg = args[0] if args else "MT19937"
        ok = isinstance(arg, str) or (
            isinstance(arg, Stub) and arg._global.qualname in BIT_GENERATORS
        )
        return (
            ""
            if ok and len(args) <= 1
            else (f"{name} is given {_label(arg)}, not a BitGenerator name or class: it calls it")
        )
    first = args[0] if args else "MT19937"
    ctor = args[1] if len(args) > 1 else None
    first_ok = isinstance(first, str) or (
        isinstance(first, Result) and first.call is not None and first.qualname in _NUMPY_CTORS
    )
    ctor_ok = ctor is None or (
        isinstance(ctor, Stub)
        and ctor._global.qualname == "numpy.random._pickle.__bit_generator_ctor"
    )
    if first_ok and ctor_ok and len(args) <= 2:
        return ""
    return (
        f"{name} is given {_label(first)} and {_label(ctor)}: it calls the constructor "
        "it is given, and only numpy's own is expected"
    )


def _stopped_by_the_scan(rec: StreamRecord, data: memoryview) -> bool:
    """A limit of the scan stopped ``rec`` where the loader may read on: not at a stream's
    first opcode when that one breaks every unpickler at once."""
    at_start = rec.end == rec.start < len(data) and data[rec.start] in BREAKS_AT_START
    return bool(rec.capped) and not at_start


def _error(where: Where, report: FileReport, rec: StreamRecord, what: str) -> None:
    place = where.file + (f"!{where.member}" if where.member else "")
    report.errors.append(f"{place}: pickle stream at byte {rec.start} {what}")


def read_as_loaders(
    data: memoryview, pos: int, where: Where, report: FileReport, judge: _Judge
) -> StreamRecord:
    """Read the stream at ``pos`` as every loader that could meet it would, judge what each
    saw, report failures; return the C unpickler's record (the one ``pickle.load``,
    ``torch.load`` and ``np.load`` follow)."""
    deadline = judge.deadline
    rec = read_stream(data, pos, deadline, torch_names=where.torch_file)
    judge.record(rec)
    joblib = any(g.qualname in JOBLIB_WRAPPERS for g in rec.globals)
    alt = None
    if joblib or rec.error:
        alt = read_stream(
            data, pos, deadline, python=True, joblib=joblib, torch_names=where.torch_file
        )
        judge.record(alt, " (as the pure-Python unpickler of joblib/dill reads it)")
    if _stopped_by_the_scan(rec, data) or (alt is not None and _stopped_by_the_scan(alt, data)):
        judge.capped = True
    if rec.capped:
        _error(where, report, rec, f"was not read to its end: {rec.capped}")
    if alt is not None and alt.capped and not rec.capped:
        _error(
            where,
            report,
            alt,
            f"was not read to its end by the pure-Python unpickler: {alt.capped}",
        )
    if rec.error and not (joblib and alt is not None and not (alt.error or alt.capped)):
        _error(where, report, rec, f"breaks at byte {rec.error_offset}: {rec.error}")
    elif rec.error:
        judge.add(
            rec.error_offset,
            "",
            "",
            "safe",
            f"pickle.load stops here ({rec.error}); joblib.load reads this joblib dump to its end",
        )
        rec = alt  # joblib's reading decides where the next stream starts
    elif alt is not None and alt.error and not rec.error:
        _error(
            where, report, alt, f"breaks at byte {alt.error_offset} for joblib.load: {alt.error}"
        )
    return rec


def _key(value: Any) -> str:
    """A storage key as text (keys are strings; a hostile one may be an int too big for
    ``str``)."""
    if isinstance(value, str):
        return value
    try:
        return type(value).__name__ + ":" + repr(value)[:64]
    except ValueError:  # an int beyond str()'s digit limit, maybe inside a tuple
        return f"<{type(value).__name__} without a printable form>"


def _storage_itemsize(args: Any) -> int | None:
    """The element size of the storage type in a legacy tar's ``(key, location, type)``
    (a tuple or list, as torch unpacks it), None when it is not a storage type torch names."""
    if not isinstance(args, (tuple, list)) or len(args) != 3:
        return None
    cls = args[2]
    name = cls._global.name if isinstance(cls, Stub) else ""
    return _STORAGE_ITEMSIZE.get(name[: -len("Storage")] if name.endswith("Storage") else "")


def _storage_label(args: Any) -> str:
    """What a legacy tar's storage arguments give as the type, for a message."""
    if isinstance(args, (tuple, list)) and len(args) == 3:
        return _label(args[2])
    return f"{_label(args)} instead of (key, location, type)"


def _legacy_storages(main: StreamRecord, keys: Any) -> list[tuple[str, int]] | None:
    """(key, itemsize) for each storage in the order the legacy file writes them."""
    types: dict[str, int] = {}
    for pid in main.persistent_ids:
        # torch's persistent_load slices the id (``saved_id[1:]``): a list serves as well
        if isinstance(pid, (tuple, list)) and len(pid) >= 3 and pid[0] == "storage":
            cls, key = pid[1], pid[2]
            name = cls._global.name if isinstance(cls, Stub) else ""
            base = name[: -len("Storage")] if name.endswith("Storage") else name
            types[_key(key)] = _STORAGE_ITEMSIZE.get(base, 1)
    if not isinstance(keys, list):
        return None
    return [(_key(k), types.get(_key(k), 1)) for k in keys]


def scan_blob(
    data: memoryview, where: Where, report: FileReport, deadline: float, start: int = 0
) -> bool:
    """Scan every pickle stream in ``data`` from ``start``: concatenated streams, the torch
    legacy layout (storages skipped by size, trailing bytes scanned again), joblib dumps.

    Returns:
        Whether a limit of the scan (not of the loader) stopped a reading: the loader
        would have read on.
    """
    judge = _Judge(where, report, deadline)
    pos, count, legacy_step = start, 0, 0
    records: list[StreamRecord] = []
    n = len(data)
    while pos < n and count < MAX_STREAMS:
        if count and data[pos] not in OPCODE_BYTES:
            if bytes(data[pos : pos + 4096]).strip(b"\0 \r\n\t"):
                judge.add(
                    pos,
                    "",
                    "",
                    "safe",
                    f"{n - pos} bytes after the last pickle stream "
                    "are not a pickle (not read by a loader)",
                )
            break
        rec = read_as_loaders(data, pos, where, report, judge)
        records.append(rec)
        count += 1
        report.scanned.append(f"{where.member or where.file}@{pos}")
        if rec.error or rec.capped or rec.dynamic or rec.end <= pos:
            break
        pos = rec.end
        if count == 1 and type(rec.value) is int and rec.value == LEGACY_MAGIC:
            legacy_step = 1
            where.torch_file = True
            report.kind = report.kind or "torch-legacy"
        if legacy_step and count == 5:
            pos = _skip_storages(data, pos, records[3], rec.value, where, report)
            if pos < 0:
                break
            legacy_step = 0
        if time.monotonic() > deadline:
            report.errors.append(f"{where.file}: scan stopped at the time limit")
            judge.capped = True
            break
    if count >= MAX_STREAMS and pos < n and data[pos] in OPCODE_BYTES:
        # a loader reading until EOF goes on: what was not read is not known to be safe
        report.errors.append(
            f"{where.file}: more than {MAX_STREAMS} pickle streams; the rest "
            f"(from byte {pos}) was not read"
        )
        judge.capped = True
    if legacy_step and count < 5 and not report.errors:
        # torch's legacy layout is five pickles (magic, protocol, sys_info, object, keys):
        # a file that stops early was not seen whole, so it cannot be called safe
        report.errors.append(
            f"{where.file}: legacy torch file truncated after {count} of its 5 pickles (byte {pos})"
        )
    return judge.capped


LEGACY_TAR_RECORDS = ("storages", "tensors")
MAX_LEGACY_ITEMS = 1_000_000


def scan_legacy_tar_member(
    record: str, data: memoryview, where: Where, report: FileReport, deadline: float
) -> None:
    """The ``storages`` or ``tensors`` member of a pre-0.4 torch tar, read as
    ``torch.serialization.legacy_load`` reads it: a count pickle, then per item an args
    pickle followed by raw bytes (a storage: int64 element count and its data; a tensor:
    int32 ndim, 4 pad bytes, sizes, strides, offset), and for storages a last pickle of
    views.  Read as back-to-back pickles, the first raw bytes would end the reading with
    a payload pickle still ahead of torch."""
    judge = _Judge(where, report, deadline)
    where.torch_file = True
    n, pos = len(data), 0

    def stream() -> StreamRecord | None:
        nonlocal pos
        rec = read_as_loaders(data, pos, where, report, judge)
        report.scanned.append(f"{where.member or where.file}@{pos}")
        if rec.error or rec.capped or rec.dynamic or rec.end <= pos:
            return None
        pos = rec.end
        return rec

    def raw(size: int) -> bool:
        nonlocal pos
        if size < 0 or pos + size > n:
            report.errors.append(
                f"{where.file}!{where.member}: legacy {record} item runs past the end (byte {pos})"
            )
            return False
        pos += size
        return True

    count = stream()
    items = count.value if count is not None and type(count.value) is int else None
    if items is None or not 0 <= items <= MAX_LEGACY_ITEMS:
        if count is not None:
            report.errors.append(
                f"{where.file}!{where.member}: legacy {record} count {items!r} is not a count"
            )
        return
    for i in range(items):
        args = stream()
        if args is None:
            return
        if time.monotonic() > deadline:
            report.errors.append(f"{where.file}!{where.member}: scan stopped at the time limit")
            return
        if record == "storages":
            # torch unpacks ``key, location, storage_type = args`` (a list does too) and
            # reads element count x the storage type's element size: a type it cannot
            # size is a byte count keishiki cannot follow
            itemsize = _storage_itemsize(args.value)
            if itemsize is None:
                report.errors.append(
                    f"{where.file}!{where.member}: legacy storage {i}'s type is not one "
                    f"torch names (its size in bytes is not known): {_storage_label(args.value)}"
                )
                return
            if not raw(8):
                return
            (numel,) = struct.unpack("<q", data[pos - 8 : pos])
            if not raw(numel * itemsize):
                return
        else:
            if not raw(8):
                return
            (ndim,) = struct.unpack("<i", data[pos - 8 : pos - 4])
            # torch reads ndim sizes and strides (8 bytes each) and an offset, however many
            if ndim < 0:
                report.errors.append(
                    f"{where.file}!{where.member}: legacy tensor with {ndim} dimensions "
                    f"(byte {pos - 8})"
                )
                return
            if not raw(16 * ndim + 8):
                return
    if record == "storages" and stream() is None:
        return
    if pos < n:  # whatever follows is read as pickles too (torch itself stops here)
        scan_blob(data, where, report, deadline, start=pos)


def _skip_storages(
    data: memoryview, pos: int, main: StreamRecord, keys: Any, where: Where, report: FileReport
) -> int:
    plan = _legacy_storages(main, keys)
    if plan is None:
        report.errors.append(f"{where.file}: legacy torch file without a storage key list")
        return -1
    n = len(data)
    # each 8-byte size read faults in a neighbourhood of the mapped file ("fault-around",
    # which MADV_RANDOM does not stop here): drop the mapped pages every so often, or a
    # 2000-storage checkpoint holds ~130 MB of them by the end (they stay in the page cache)
    mapped = data.obj if isinstance(getattr(data, "obj", None), mmap.mmap) else None
    for i, (key, itemsize) in enumerate(plan):
        if mapped is not None and i % 128 == 127:
            mapped.madvise(mmap.MADV_DONTNEED)
        if pos + 8 > n:
            report.errors.append(f"{where.file}: legacy storage {key} truncated at byte {pos}")
            return -1
        (numel,) = struct.unpack("<q", data[pos : pos + 8])
        size = numel * itemsize
        if numel < 0 or pos + 8 + size > n:
            report.errors.append(
                f"{where.file}: legacy storage {key} claims {numel} elements "
                f"at byte {pos}, beyond the end of the file"
            )
            return -1
        pos += 8 + size
    return pos


__all__ = ["Where", "scan_blob", "read_as_loaders", "looks_like_pickle", "LEGACY_MAGIC"]
