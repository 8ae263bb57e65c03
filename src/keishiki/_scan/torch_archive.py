"""Which zip members torch reads, and how: the layout rules of ``PyTorchStreamReader``, and a
cross-check against torch's own reader where torch is installed.

torch takes the archive's folder from the *first* directory entry (the text before its first
``/``: ``archive``, ``.data`` for a file saved as ``.data.pt``, any name at all) and looks
every record up as ``<folder>/<record>`` with miniz's case-insensitive compare, so
``ARCHIVE/DATA.PKL``, ``x/Code/…`` and ``y/CONSTANTS.PKL`` all load.  ``torch.load`` unpickles
``data.pkl``; ``torch.jit.load`` also reads ``constants.pkl`` and compiles ``code/``; the
storages ``data/<key>`` are raw bytes that nothing unpickles.

Where torch is installed, its reader (``torch._C.PyTorchFileReader``: it lists and reads
records without unpickling anything) is asked for every record, and any disagreement with
keishiki's view (a record one sees and the other does not, other bytes for the same record)
is a finding: a parser differential is how a payload hides from a scanner.
"""

from __future__ import annotations

import importlib.util
import os
import re
import struct
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import BinaryIO

from .archives import (
    MEMBER_LIMIT,
    ArchiveError,
    Member,
    ZipListing,
    list_zip,
    read_zip_head,
    read_zip_member,
)

PICKLE_RECORDS = ("data.pkl", "constants.pkl", "bytecode.pkl")
_STORAGE = re.compile(rb"^(?:data|constants)/\d+$")  # torch.save / jit.save storage records
_COMPARE_LIMIT = 64 << 20  # pickle and code records up to this size are compared bytewise
_SMALL = 1 << 20  # any record up to this size is compared byte for byte
_CODE_SUFFIXES = (".pkl", ".py", ".json", ".debug_pkl", ".pickle")
MAX_FINDINGS = 16  # per-record differentials named before the rest are summed up


@dataclass
class Layout:
    """The archive as torch resolves it (from miniz's directory)."""

    folder: bytes | None  # None: torch refuses (no '/' in first entry)
    records: dict[bytes, list[Member]] = field(default_factory=dict)  # folded record -> members
    _prefix: bytes = field(default=b"", init=False, repr=False, compare=False)  # folder + "/"

    def lookup(self, record: str) -> list[Member]:
        """The members torch may return for ``record`` (several: miniz's pick is arbitrary)."""
        return self.records.get(record.encode().lower(), [])

    def record_of(self, member: Member) -> bytes | None:
        """``member``'s record name (folded) when torch can reach it, else None."""
        if self.folder is None:
            return None
        prefix = self._prefix or self.folder.lower() + b"/"  # asked per member: built once
        self._prefix = prefix
        raw = member.raw_name.lower()
        return raw[len(prefix) :] if raw.startswith(prefix) else None

    @property
    def torch_opens(self) -> bool:
        """``PyTorchStreamReader`` accepts the archive: a folder, and a version record."""
        return self.folder is not None and bool(
            self.lookup("version") or self.lookup(".data/version")
        )

    @property
    def is_torch(self) -> bool:
        """torch.load or torch.jit.load would read a pickle from it."""
        return any(self.lookup(r) for r in PICKLE_RECORDS)

    def is_storage(self, member: Member) -> bool:
        """Raw tensor bytes torch reads without unpickling (skipped by the scan)."""
        rec = self.record_of(member)
        return self.is_torch and rec is not None and bool(_STORAGE.match(rec))


def layout(listing: ZipListing) -> Layout:
    """torch's view of ``listing``: its folder and record lookup table."""
    entries = listing.miniz if listing.miniz is not None else listing.members
    if not entries or b"/" not in entries[0].raw_name:
        return Layout(None)
    folder = entries[0].raw_name.split(b"/", 1)[0]
    out = Layout(folder)
    for m in listing.members:
        rec = out.record_of(m)
        if rec is not None:
            out.records.setdefault(rec, []).append(m)
    return out


class MemberHeads:
    """The first bytes of STORED members, many per read: what :func:`read_zip_head` gives.

    The scan checks every storage of a torch zip for the NumPy magic (``np.load`` of the same
    zip would unpickle an object array): one 30-byte header read and one data read each cost
    four system calls per storage, which is most of the scan's time on a checkpoint of
    thousands of small tensors.  Headers that start within ``WINDOW`` bytes of each other
    are read together (never the data of large members between them); anything that does
    not fit the window read, or is not STORED, is read by :func:`read_zip_head` itself.
    """

    WINDOW = 64 * 1024
    SLACK = 1024  # name, extra field and the bytes asked for, past the last header read

    def __init__(self, fp: BinaryIO, members: list[Member]):
        self.fp = fp
        self.starts = sorted(m.header_offset for m in members)
        self.buf, self.base = b"", -1

    def read(self, member: Member, n: int) -> bytes:
        """``read_zip_head(fp, member, n)``."""
        if member.method != 0 or n > self.SLACK // 2:
            return read_zip_head(self.fp, member, n)
        rel = member.header_offset - self.base
        if self.base < 0 or rel < 0 or rel + 30 > len(self.buf):
            if not self._fill(member.header_offset):
                return read_zip_head(self.fp, member, n)
            rel = 0
        buf = self.buf
        if buf[rel : rel + 4] != b"PK\x03\x04":
            return read_zip_head(self.fp, member, n)
        name_len, extra_len = struct.unpack_from("<HH", buf, rel + 26)
        start = rel + 30 + name_len + extra_len
        end = start + min(member.compressed, n)
        if end > len(buf):
            return read_zip_head(self.fp, member, n)
        return buf[start:end]

    def _fill(self, offset: int) -> bool:
        i = bisect_right(self.starts, offset + self.WINDOW) - 1
        last = max(offset, self.starts[i]) if i >= 0 else offset
        try:
            self.fp.seek(offset)
            self.buf = self.fp.read(last - offset + self.SLACK)
        except (OSError, ValueError):
            self.buf, self.base = b"", -1
            return False
        self.base = offset
        return len(self.buf) >= 30


@dataclass
class Differential:
    """What torch's own reader sees differently: findings and the bytes to scan as well."""

    findings: list[tuple[str, str]] = field(default_factory=list)  # (member, reason)
    extra: list[tuple[str, bytes]] = field(default_factory=list)  # (member, torch's bytes)
    note: str = ""  # why no cross-check ran
    import_seconds: float = 0.0  # spent importing torch (not the file's fault: off budget)


def views(fp: BinaryIO) -> tuple[ZipListing, Layout, Differential]:
    """Everything the scanner needs to know about a zip: both directories, torch's layout,
    and torch's own reader's disagreements with them.

    Raises:
        ArchiveError: no reader (miniz, ``zipfile``, torch) finds a directory.
    """
    failed: ArchiveError | None = None
    try:
        listing = list_zip(fp)
    except ArchiveError as exc:
        listing, failed = ZipListing([], None, str(exc), str(exc)), exc
    lay = layout(listing)
    diff = cross_check(fp, listing, lay)
    split = _directories_differ(listing) or _shared_headers(listing)
    if split:
        diff.findings.insert(0, ("", split))
    if failed is not None and not diff.findings:
        raise failed
    if len(diff.findings) > MAX_FINDINGS:
        rest = len(diff.findings) - MAX_FINDINGS
        diff.findings[MAX_FINDINGS:] = [("", f"and {rest} more records torch reads differently")]
    return listing, lay, diff


def _directories_differ(listing: ZipListing) -> str:
    """Why miniz (torch) and ``zipfile`` (numpy, Keras, most scanners) list different members,
    "" when they agree or one of them refuses the file.  No zip writer makes such a file."""
    if listing.miniz is None or listing.zipfile_error:
        return ""
    if all(m.seen_by == "miniz+zipfile" for m in listing.members):
        return ""  # each entry (offset, sizes, method) read alike by both
    only_mz = sorted(m.name for m in listing.members if m.seen_by == "miniz")
    only_zf = sorted(m.name for m in listing.members if m.seen_by == "zipfile")
    return (
        f"miniz (torch) and zipfile read different central directories: only torch sees "
        f"{only_mz[:4]}, only zipfile sees {only_zf[:4]}"
    )


def _shared_headers(listing: ZipListing) -> str:
    """Why two directory entries of one reader point at one local header ("" when none do):
    no zip writer makes such a file, and a reader looking a name up may land on either."""
    names: dict[int, list[str]] = {}
    for m in listing.members:
        names.setdefault(m.header_offset, []).append(m.name)
    shared = [sorted(n) for n in names.values() if len(n) > 1]
    if not shared:
        return ""
    return (
        f"{len(shared)} local headers are named by several directory entries "
        f"({shared[0][:4]}...): a reader may take either name's bytes for the other's"
    )


def torch_installed() -> bool:
    """True when torch can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def is_regular(listing: ZipListing, lay: Layout) -> bool:
    """True for an archive laid out exactly as ``torch.save`` / ``torch.jit.save`` write one:
    miniz and ``zipfile`` list the same entries (stored, or deflated as older ``jit.save``
    did), all under the one folder, no two names equal but for case, nothing before the
    first local header.  Every known way
    to make torch's reader see another archive than keishiki's (prepended data, a second
    directory, zip64 and count tricks, case twins) breaks one of these."""
    members = listing.members
    if listing.miniz is None or listing.zipfile_error or lay.folder is None or not members:
        return False
    prefix = lay.folder + b"/"
    folded = [m.raw_name.lower() for m in members]
    return (
        all(
            m.seen_by == "miniz+zipfile" and m.method in (0, 8) and m.raw_name.startswith(prefix)
            for m in members
        )
        and len(set(folded)) == len(folded)
        and min(m.header_offset for m in members) == 0
    )


def cross_check(fp: BinaryIO, listing: ZipListing, lay: Layout) -> Differential:
    """Read ``fp`` with torch's reader and compare every record with keishiki's view.

    Importing torch costs 2-3 s (a 30 MB checkpoint scanned in 0.17 s without it, 3.5 s
    with it), so an archive that :func:`is_regular` finds laid out as torch writes one is
    compared only when torch is already loaded in this process (``run``, ``convert``) or
    ``KEISHIKI_SCAN_TORCH_READER=1`` asks for it; anything irregular is always compared.
    """
    out = Differential()
    if listing.miniz is not None and not lay.torch_opens:  # .npz, .keras...: no torch import
        out.note = "torch's reader would refuse it (no folder or no version record)"
        return out
    if (
        is_regular(listing, lay)
        and "torch" not in sys.modules
        and os.environ.get("KEISHIKI_SCAN_TORCH_READER") != "1"
    ):
        out.note = "laid out as torch.save writes it: keishiki's miniz reader only"
        return out
    if not torch_installed():
        out.note = "torch not installed: archive read with keishiki's miniz reader only"
        return out
    started = time.monotonic()
    try:
        import torch  # noqa: PLC0415 - heavy, and only for zips
    except Exception as exc:  # a broken install (missing shared library...): no cross-check
        out.note = f"torch cannot be imported ({type(exc).__name__}): no cross-check"
        return out
    finally:
        out.import_seconds = time.monotonic() - started

    try:
        fp.seek(0)
        reader = torch._C.PyTorchFileReader(fp)
    except Exception as exc:  # torch cannot open it: neither can torch.load / jit.load
        out.note = f"torch's reader refuses it: {str(exc).splitlines()[0][:200]}"
        return out
    folder = (lay.folder or _torch_folder(fp, reader)).decode("utf-8", "surrogateescape")
    try:
        records = list(reader.get_all_records())
    except Exception:  # a member outside the folder: torch.load fails, jit lookups still work
        records = sorted({r.decode("utf-8", "surrogateescape") for r in lay.records})
    else:
        # torch lists names as C strings: cut at a NUL (such names are findings already)
        ours = sorted(
            m.raw_name.split(b"\0")[0].decode("utf-8", "surrogateescape").split("/", 1)[-1]
            for m in (listing.miniz or [])
        )
        if lay.folder is None or sorted(records) != ours:
            only_torch = sorted(set(records) - set(ours))
            only_ours = sorted(set(ours) - set(records))
            out.findings.append(
                (
                    folder,
                    f"torch lists records {only_torch[:5]} and keishiki "
                    f"{only_ours[:5]}: the two readers see different "
                    f"archives",
                )
            )
    by_header: dict[int, list[Member]] = {}
    for m in listing.members:
        by_header.setdefault(m.header_offset, []).append(m)
    for rec in records:
        _compare_record(fp, reader, rec, f"{folder}/{rec}", by_header, lay, out)
    return out


def _compare_record(
    fp,
    reader,
    rec: str,
    name: str,
    by_header: dict[int, list[Member]],
    lay: Layout,
    out: Differential,
) -> None:
    """Locate ``rec`` as torch does and compare entry, size and bytes with keishiki's."""
    try:
        header = reader.get_record_header_offset(rec)
        size = reader.get_record_size(rec)
    except Exception:  # torch cannot resolve its own record name: nothing loads it
        return
    # the member at that header, listed under the same record name (a second entry for the
    # same bytes under another name is not the record torch reads)
    folded = rec.encode().lower()
    mine = next(
        (m for m in by_header.get(header, []) if m.size == size and lay.record_of(m) == folded),
        None,
    )
    storage = bool(_STORAGE.match(rec.encode().lower())) and lay.is_torch
    if mine is None:
        out.findings.append(
            (
                name,
                f"torch reads record {rec!r} from the entry at byte {header} "
                f"({size} bytes), which keishiki's reader does not list",
            )
        )
        if not storage and size <= _COMPARE_LIMIT:
            out.extra.append((name, _torch_bytes(reader, rec)))
        return
    if (
        storage
        or size > _COMPARE_LIMIT
        or (size > _SMALL and not rec.lower().endswith(_CODE_SUFFIXES))
    ):  # big data records: where torch reads them is enough
        try:
            same = reader.get_record_offset(rec) == _data_offset(fp, mine)
        except Exception:
            same = True
        if not same:
            out.findings.append(
                (name, f"torch reads record {rec!r} from another offset than keishiki")
            )
        return
    theirs = _torch_bytes(reader, rec)
    try:
        ours = read_zip_member(fp, mine, limit=max(MEMBER_LIMIT, size))
    except ArchiveError:  # keishiki refused it (bomb limits, damage; an error already):
        if theirs is not None:  # what torch reads is still judged
            out.extra.append((name, theirs))
        return
    if theirs is not None and theirs != ours:
        out.findings.append(
            (name, f"torch's reader returns other bytes for {rec!r} than keishiki's")
        )
        out.extra.append((name, theirs))


def _torch_folder(fp: BinaryIO, reader) -> bytes:
    """The archive folder torch uses, read from the local header of its first record (for
    naming findings when keishiki's own readers found no directory)."""
    try:
        first = reader.get_all_records()[0]
        fp.seek(reader.get_record_header_offset(first) + 26)
        n = int.from_bytes(fp.read(2), "little")
        fp.seek(2, 1)
        return fp.read(n).split(b"/", 1)[0] or b"?"
    except Exception:
        return b"?"


def _torch_bytes(reader, rec: str) -> bytes | None:
    try:
        return bytes(reader.get_record(rec))
    except Exception:  # encrypted flag, bad method: torch cannot read it either
        return None


def _data_offset(fp: BinaryIO, m: Member) -> int | None:
    fp.seek(m.header_offset + 26)
    lens = fp.read(4)
    if len(lens) < 4:
        return None
    return (
        m.header_offset
        + 30
        + int.from_bytes(lens[:2], "little")
        + int.from_bytes(lens[2:], "little")
    )
