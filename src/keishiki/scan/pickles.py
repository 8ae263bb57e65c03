"""Scan pickle streams: every global and every call, judged against the allowlist.

The restricted VM (:mod:`keishiki.core.pickle_reader`) runs each stream without calling
anything; this module turns its record into findings and adds what a name-only check
misses: calls whose callable was built at load time (``getattr(...)(...)`` chains), BUILD
on a global (attribute tampering, modelscan#85), ``_codecs.encode``/``copyreg`` helpers
used with unusual arguments.  An opcode-level cross-check with :mod:`pickletools` looks
past a point where the VM stopped (a malformed tail, a cap) so a gadget after the break is
still named: ``pickle.load`` may well have executed what came before it.

Layouts: several streams concatenated (benign prefix then payload), and torch's legacy
format (magic number, protocol, sys_info, main pickle, storage keys, then raw storages:
storages are skipped by their recorded sizes, and bytes after them are scanned again).
"""

from __future__ import annotations

import mmap
import pickletools
import struct
import time
import warnings
from dataclasses import dataclass
from typing import Any

from ..core.pickle_reader import OPCODE_NAMES, Call, GlobalRef, PickleRecord, read_pickle
from .allowlist import classify
from .findings import FileReport, Finding

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_OPS = 3_000_000        # 1.5-8 s of VM time; data.pkl of a 10k-tensor checkpoint: ~1M
MAX_STREAMS = 64           # concatenated streams read from one blob
_PLAUSIBLE_FIRST = frozenset(b"(c}])NIFSVUTXKMJGBCdlLiP\x80")
# every opcode that can reach a callable: the VM records each (globals, calls, BUILD);
# the cross-check re-reads the naming ones (GLOBAL, STACK_GLOBAL, INST, EXT*) after a break
CALLABLE_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ",
                "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"}
_STORAGE_ITEMSIZE = {
    "Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
    "Char": 1, "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1,
    "QUInt8": 1, "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1, "Untyped": 1, "Typed": 1,
}


@dataclass
class Where:
    """Where a stream lives, for findings: the file, the member path, the context."""

    file: str
    member: str = ""
    torchscript: bool = False
    torch_file: bool = False  # persistent ids are expected (torch.save data)


def looks_like_pickle(head: bytes) -> bool:
    """A cheap test: protocol 2+ header, or a first byte protocol 0/1 writers start with."""
    if not head:
        return False
    if head[0] == 0x80:
        return len(head) > 1 and head[1] <= 5
    return head[0] in _PLAUSIBLE_FIRST


def _finding(where: Where, offset: int | None, opcode: str, qualname: str, severity: str,
             reason: str) -> Finding:
    return Finding(where.file, where.member, offset, opcode, qualname, severity, reason)


def _walk_args(value: Any, limit: int = 10_000):
    """GlobalRefs and Calls reachable from a call's arguments (iterative, bounded)."""
    todo, seen, n = [value], set(), 0
    while todo and n < limit:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        n += 1
        if isinstance(obj, (GlobalRef, Call)):
            yield obj
        if isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, Call):
            todo.extend([obj.func, obj.args])


def record_findings(rec: PickleRecord, where: Where, report: FileReport) -> None:
    """Turn one VM record into findings on ``report`` (globals, calls, persistent ids)."""
    severity_at: dict[int, str] = {}
    for ref in rec.globals:
        severity, reason = classify(ref.module, ref.name, torchscript=where.torchscript)
        if ref.note:
            reason += f" ({ref.note})"
        report.add(_finding(where, ref.offset, ref.opcode, ref.qualname, severity, reason))
        severity_at[id(ref)] = severity
    for call in rec.calls:
        _judge_call(call, where, report)
    if not where.torch_file:
        for pid in rec.persistent_ids[:1]:
            report.add(_finding(where, pid.offset, "BINPERSID", "", "safe",
                                "persistent id outside a torch checkpoint: plain pickle.load "
                                "refuses it; a custom loader decides what it means"))


def _judge_call(call: Call, where: Where, report: FileReport) -> None:
    func = call.func
    if call.opcode == "BUILD":
        # the VM records BUILD on a non-Call target as Call(func=None, args=(target,))
        target = call.args[0] if call.args else None
        if isinstance(target, GlobalRef):
            report.add(_finding(where, call.offset, "BUILD", target.qualname, "dangerous",
                                f"BUILD sets attributes on the global {target.qualname} "
                                "itself (tampers with module state; modelscan#85 family)"))
        return
    if not isinstance(func, GlobalRef):
        what = func.qualname if isinstance(func, Call) else type(func).__name__
        report.add(_finding(where, call.offset, call.opcode, "<dynamic>", "dangerous",
                            f"{call.opcode} calls an object produced at load time (result of "
                            f"{what}), not a named global: a getattr/import gadget chain"))
        return
    qualname = func.qualname
    if qualname == "_codecs.encode":
        args = call.args
        ok = (len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str)
              and args[1].lower().replace("-", "").replace("_", "") in ("latin1", "iso88591"))
        if not ok:
            report.add(_finding(where, call.offset, call.opcode, qualname, "unknown",
                                "_codecs.encode is allowed only as bytes reconstruction "
                                "(text, 'latin1'); called here with other arguments"))
    elif qualname in ("copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"):
        refs = [r for r in _walk_args(call.args) if isinstance(r, GlobalRef)]
        if not refs:
            report.add(_finding(where, call.offset, call.opcode, qualname, "unknown",
                                f"{qualname} with a class that is not a named global"))


def scan_stream(data: memoryview, start: int, where: Where, report: FileReport,
                deadline: float) -> PickleRecord:
    """Scan one stream at ``start``; record findings and any error; return the record."""
    rec = read_pickle(data, start, path=where.file, lenient=True, max_ops=MAX_OPS)
    record_findings(rec, where, report)
    if rec.error is not None:
        report.errors.append(f"{where.file}{'!' + where.member if where.member else ''}: "
                             f"pickle stream at byte {start} breaks at byte {rec.error_offset}: "
                             f"{rec.error}")
        cross_check(data, rec, where, report, deadline)
    elif rec.n_ops <= 200_000:
        cross_check(data, rec, where, report, deadline)
    return rec


def cross_check(data: memoryview, rec: PickleRecord, where: Where, report: FileReport,
                deadline: float) -> None:
    """Opcode-level pass with pickletools over the stream: every GLOBAL/INST/STACK_GLOBAL/EXT
    the VM did not record (it stopped early) becomes a finding by its literal name."""
    seen = {g.offset for g in rec.globals}
    # after a break, restart where the VM stopped (an opcode boundary): what came before is
    # already recorded, and re-reading it would double the time spent on hostile streams
    start = rec.error_offset if rec.error is not None and rec.error_offset else rec.start
    stop = rec.end if rec.error is None else len(data)  # a clean stream ends at its STOP
    recent: list[str] = []
    blob = bytes(data[start:min(stop, start + (64 << 20))])  # bounded copy for genops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genops warns on odd escapes in STRING args
        for op, arg, pos in _bounded_genops(blob, deadline):
            at = start + pos
            name = op.name
            if isinstance(arg, str) and name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE",
                                                 "BINUNICODE8", "STRING", "BINSTRING",
                                                 "SHORT_BINSTRING"):
                recent = (recent + [arg])[-2:]
            if name in ("GLOBAL", "INST") and at not in seen:
                module, _, gname = str(arg).partition(" ")
                _late(where, report, at, name, module, gname)
            elif name == "STACK_GLOBAL" and at not in seen:
                if len(recent) == 2:
                    _late(where, report, at, name, recent[0], recent[1])
                else:
                    _late(where, report, at, name, "<dynamic>", "<dynamic>")
            elif name in ("EXT1", "EXT2", "EXT4") and at not in seen:
                _late(where, report, at, name, "copyreg.extension", str(arg))
            if name == "STOP" and rec.error is None:
                return
    # genops breaks where the stream breaks; what it saw up to there is recorded


def _bounded_genops(blob: bytes, deadline: float):
    """pickletools.genops, stopping at the time limit; yields what it read before a break."""
    try:
        for n, item in enumerate(pickletools.genops(blob)):
            if n % 4096 == 0 and time.monotonic() > deadline:
                return
            yield item
    except (ValueError, struct.error, IndexError, UnicodeDecodeError, EOFError, TypeError,
            OverflowError):
        return


def _late(where: Where, report: FileReport, at: int, opcode: str, module: str, name: str) -> None:
    severity, reason = classify(module, name, torchscript=where.torchscript)
    report.add(_finding(where, at, opcode, f"{module}.{name}", severity,
                        reason + " (seen by the opcode cross-check beyond the VM's stop)"))


def _legacy_storages(main: PickleRecord, keys: Any) -> list[tuple[str, int]] | None:
    """(key, itemsize) for each storage in the order the legacy file writes them."""
    types: dict[str, int] = {}
    for pid in main.persistent_ids:
        t = pid.pid
        if isinstance(t, tuple) and len(t) >= 3 and t[0] == "storage":
            cls = t[1]
            key = t[2]
            name = cls.name if isinstance(cls, GlobalRef) else ""
            base = name[:-len("Storage")] if name.endswith("Storage") else name
            types[str(key)] = _STORAGE_ITEMSIZE.get(base, 1)
    if not isinstance(keys, list):
        return None
    return [(str(k), types.get(str(k), 1)) for k in keys]


def scan_blob(data: memoryview, where: Where, report: FileReport, deadline: float,
              start: int = 0) -> int:
    """Scan every pickle stream in ``data`` from ``start``: concatenated streams, the torch
    legacy layout (storages skipped by size, trailing bytes scanned again).

    Returns:
        The number of streams read.
    """
    pos, count, legacy_step = start, 0, 0
    records: list[PickleRecord] = []
    n = len(data)
    while pos < n and count < MAX_STREAMS:
        if count and data[pos] not in _OPCODE_FIRST:
            if bytes(data[pos:pos + 4096]).strip(b"\0 \r\n\t"):
                report.add(_finding(where, pos, "", "", "safe",
                                    f"{n - pos} bytes after the last pickle stream are not a "
                                    "pickle (not read by a loader)"))
            break
        rec = scan_stream(data, pos, where, report, deadline)
        records.append(rec)
        count += 1
        report.scanned.append(f"{where.member or where.file}@{pos}")
        if rec.error is not None or rec.end <= pos:
            break
        pos = rec.end
        if count == 1 and rec.value == LEGACY_MAGIC:
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
            break
    if legacy_step and count < 5 and not report.errors:
        # torch's legacy layout is five pickles (magic, protocol, sys_info, object, keys):
        # a file that stops early was not seen whole, so it cannot be called safe
        report.errors.append(f"{where.file}: legacy torch file truncated after {count} of its "
                             f"5 pickles (byte {pos})")
    return count


def _skip_storages(data: memoryview, pos: int, main: PickleRecord, keys: Any, where: Where,
                   report: FileReport) -> int:
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
        (numel,) = struct.unpack("<q", data[pos:pos + 8])
        size = numel * itemsize
        if numel < 0 or pos + 8 + size > n:
            report.errors.append(f"{where.file}: legacy storage {key} claims {numel} elements "
                                 f"at byte {pos}, beyond the end of the file")
            return -1
        pos += 8 + size
    return pos


_OPCODE_FIRST = frozenset(op[0] for op in OPCODE_NAMES)
__all__ = ["Where", "scan_blob", "scan_stream", "looks_like_pickle", "record_findings",
           "cross_check", "CALLABLE_OPS"]
