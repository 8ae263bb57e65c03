"""A zip's central directory read as miniz reads it (the reader inside torch's
``PyTorchStreamReader``, which ``torch.load`` and ``torch.jit.load`` use).

miniz and Python's ``zipfile`` disagree on purpose-built files, and each disagreement is a
place where a scanner using one reads other bytes than the loader using the other:

* the end record: miniz takes the last signature with 22 bytes after it, searching back in
  4 KiB steps; ``zipfile`` takes the last signature in the last 64 KiB and gives up when
  fewer than 22 bytes follow it;
* zip64: miniz reads the zip64 end record where the locator points; ``zipfile`` reads it
  just before the locator, whatever the locator says;
* the member count: miniz reads as many entries as the end record counts; ``zipfile`` reads
  entries until the directory's size is used up;
* offsets: miniz takes them as absolute; ``zipfile`` shifts them when bytes were prepended.

CRCs and the "encrypted" bit are not checked here (miniz in torch does not check CRCs and
lists encrypted members).  Names are kept as raw bytes: miniz compares them bytewise, with
ASCII-only case folding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

EOCD_SIG, LOC64_SIG = b"PK\x05\x06", b"PK\x06\x07"
EOCD64_SIG, CDH_SIG = b"PK\x06\x06", b"PK\x01\x02"
_EOCD, _LOC64, _EOCD64, _CDH = 22, 20, 56, 46
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
MAX_ENTRIES = 100_000


class MinizError(Exception):
    """miniz would refuse the archive (the message names miniz's reason)."""


@dataclass
class Entry:
    """One central-directory entry as miniz indexes it."""

    raw_name: bytes
    method: int
    flags: int
    compressed: int
    size: int
    header_offset: int

    @property
    def name(self) -> str:
        return self.raw_name.decode("utf-8", "surrogateescape")


def _read(fp: BinaryIO, offset: int, n: int) -> bytes:
    fp.seek(offset)
    return fp.read(n)


def find_eocd(fp: BinaryIO, size: int) -> int:
    """The offset of the end record miniz uses (``mz_zip_reader_locate_header_sig``)."""
    if size < _EOCD:
        raise MinizError("smaller than an end-of-central-directory record")
    cur = max(size - 4096, 0)
    while True:
        buf = _read(fp, cur, min(4096, size - cur))
        i = buf.rfind(EOCD_SIG)
        while i >= 0 and size - (cur + i) < _EOCD:
            i = buf.rfind(EOCD_SIG, 0, i + 3)  # too close to the end: miniz looks further back
        if i >= 0:
            return cur + i
        if cur == 0 or size - cur >= _U16 + _EOCD:
            raise MinizError("no end-of-central-directory record")
        cur = max(cur - (4096 - 3), 0)


def _directory_bounds(fp: BinaryIO, size: int) -> tuple[int, int, int, int]:
    """(entry count, directory size, directory offset, this disk's number) as
    ``mz_zip_reader_read_central_dir`` settles them, with its multi-disk and bounds checks."""
    eocd = find_eocd(fp, size)
    rec = _read(fp, eocd, _EOCD)
    disk, cd_disk, n_disk, n_total, cd_size, cd_ofs = struct.unpack("<HHHHII", rec[4:20])
    if eocd >= _LOC64 + _EOCD64:
        loc = _read(fp, eocd - _LOC64, _LOC64)
        if loc[:4] == LOC64_SIG:
            _disk64, rec64_ofs, n_disks = struct.unpack("<IQI", loc[4:])
            if rec64_ofs > size - _EOCD64:
                raise MinizError("zip64 locator points past the end")
            rec64 = _read(fp, rec64_ofs, _EOCD64)
            if rec64[:4] == EOCD64_SIG:
                (rec64_size, _made, _need, disk, cd_disk, n_disk, n_total, cd_size, cd_ofs) = (
                    struct.unpack("<QHHIIQQQQ", rec64[4:])
                )
                if rec64_size < _EOCD64 - 12:
                    raise MinizError("zip64 end record too small")
                if n_disks != 1:
                    raise MinizError("zip64 locator: multi-disk archive")
                if n_total > _U32 or n_disk > _U32 or cd_size > _U32:
                    raise MinizError("zip64 directory beyond miniz's limits")
    if n_total != n_disk:
        raise MinizError("multi-disk archive (entry counts differ)")
    if (disk | cd_disk) and (disk != 1 or cd_disk != 1):
        raise MinizError("multi-disk archive")
    if cd_size < n_total * _CDH or cd_ofs + cd_size > size:
        raise MinizError("central directory outside the file")
    if n_total > MAX_ENTRIES:
        raise MinizError(f"{n_total} members (limit {MAX_ENTRIES})")
    return n_total, cd_size, cd_ofs, disk


def _zip64_extra(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """Fill the 0xFFFFFFFF fields from the zip64 extra field (id 1), in the spec's order."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[pos : pos + 4])
        body = extra[pos + 4 : pos + 4 + length]
        if tag == 1:
            vals, at = [], 0
            for field in (size, compressed, offset):
                if field == _U32:
                    if at + 8 > len(body):
                        raise MinizError("truncated zip64 extra field")
                    field = struct.unpack("<Q", body[at : at + 8])[0]
                    at += 8
                vals.append(field)
            return vals[0], vals[1], vals[2]
        pos += 4 + length
    return size, compressed, offset


def entries(fp: BinaryIO, size: int) -> list[Entry]:
    """Every central-directory entry miniz indexes, in directory order.

    Raises:
        MinizError: miniz would refuse to open the archive.
    """
    n_total, cd_size, cd_ofs, disk = _directory_bounds(fp, size)
    cd = _read(fp, cd_ofs, cd_size)
    out: list[Entry] = []
    p = 0
    for _ in range(n_total):
        if len(cd) - p < _CDH or cd[p : p + 4] != CDH_SIG:
            raise MinizError("damaged central directory entry")
        (flags, method, crc, compressed, fsize, n_len, x_len, c_len, disk_start, offset) = (
            struct.unpack("<HHxxxxIIIHHHHxxxxxxI", cd[p + 8 : p + 46])
        )
        del crc
        # miniz reads the method as 32 bits (method and file time): with a nonzero time a
        # stored member may declare two sizes
        method32 = struct.unpack("<I", cd[p + 10 : p + 14])[0]
        if compressed != _U32 and fsize != _U32:
            if (method32 == 0 and fsize != compressed) or (fsize and not compressed):
                raise MinizError("stored member whose sizes differ")
        if disk_start == _U16 or disk_start not in (disk, 1):
            raise MinizError("multi-disk member")
        if flags & 0x2000:  # the local headers are masked (encrypted central directory)
            raise MinizError("masked central directory")
        total = _CDH + n_len + x_len + c_len
        if total > len(cd) - p:
            raise MinizError("central directory entry runs past the directory")
        name = cd[p + 46 : p + 46 + n_len]
        extra = cd[p + 46 + n_len : p + 46 + n_len + x_len]
        if _U32 in (fsize, compressed, offset):
            fsize, compressed, offset = _zip64_extra(extra, fsize, compressed, offset)
        elif offset + 30 + compressed > size:
            raise MinizError("member data past the end of the file")
        out.append(Entry(name, method, flags, compressed, fsize, offset))
        p += total
    return out


def has_eocd(fp: BinaryIO, size: int) -> bool:
    """True when miniz finds an end record whose directory lies inside the file and starts
    with a directory entry (``zipfile`` may find none, e.g. with a signature in the last 21
    bytes; a stray signature inside tensor data is not taken for a zip)."""
    try:
        n_total, _cd_size, cd_ofs, _disk = _directory_bounds(fp, size)
        return n_total == 0 or _read(fp, cd_ofs, 4) == CDH_SIG
    except (MinizError, OSError, ValueError, struct.error):
        return False
