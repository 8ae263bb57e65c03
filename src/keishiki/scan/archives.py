"""Zip and tar archives read the way torch reads them, not the way ``zipfile`` refuses them.

torch's zip reader (miniz) ignores CRCs, the "encrypted" flag bit and local-header name
mismatches; ``zipfile`` raises on each, and scanners that use it crash and report nothing
while ``torch.load`` happily unpickles the member (picklescan GHSA-w8jq-xcqf-f792,
GHSA-7q5r-7gvp-wc82, CVE-2025-10156).  So members are located through the central
directory and their bytes read straight from the local header, with the expansion bounded
(zip bombs).
"""

from __future__ import annotations

import io
import posixpath
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ..core.source import ZIP_ERRORS

MEMBER_LIMIT = 256 * 1024 * 1024   # bytes one member may expand to before it is refused
MAX_MEMBERS = 100_000
MAX_RATIO = 1000                   # expansion ratio beyond which a big member is a bomb
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(Exception):
    """A member or archive that cannot be read (broken, bomb, unsupported)."""


@dataclass
class Member:
    """One archive member: its name, sizes, and how to read it."""

    name: str
    size: int             # declared expanded size
    compressed: int
    method: int
    header_offset: int
    is_dir: bool = False
    is_link: bool = False


def unsafe_name(name: str) -> str | None:
    """Why extracting a member called ``name`` would write outside the target folder."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        return f"absolute member name {name!r}: extraction writes outside the target folder"
    if ".." in norm.split("/"):
        return f"member name {name!r} contains '..': extraction escapes the target folder"
    if "\0" in name:
        return f"member name {name!r} contains a NUL byte"
    return None


def zip_members(fp: BinaryIO) -> list[Member]:
    """The central directory of the zip archive in ``fp``.

    Raises:
        ArchiveError: not a readable zip directory, or absurdly many members.
    """
    try:
        zf = zipfile.ZipFile(fp)
        infos = zf.infolist()
    except ZIP_ERRORS as exc:
        raise ArchiveError(f"broken zip directory: {exc}") from None
    if len(infos) > MAX_MEMBERS:
        raise ArchiveError(f"{len(infos)} members (limit {MAX_MEMBERS})")
    # ZipInfo.is_dir() indexes filename[-1]: an empty member name (a damaged directory)
    # must not raise IndexError
    return [Member(i.filename, i.file_size, i.compress_size, i.compress_type, i.header_offset,
                   i.filename.endswith("/")) for i in infos]


def read_zip_member(fp: BinaryIO, member: Member, limit: int = MEMBER_LIMIT) -> bytes:
    """The expanded bytes of ``member`` (at most ``limit + 1`` bytes are produced).

    Reads from the local header like torch does: no CRC check, flags ignored.

    Raises:
        ArchiveError: bad local header, unsupported compression, damaged or oversized data.
    """
    if member.size > limit:
        raise ArchiveError(f"member {member.name!r} expands to {member.size:,} bytes "
                           f"(limit {limit:,}; zip bomb?)")
    if member.compressed and member.size / max(member.compressed, 1) > MAX_RATIO \
            and member.size > (16 << 20):
        raise ArchiveError(f"member {member.name!r} expands {member.size // member.compressed}x "
                           f"({member.size:,} bytes): zip bomb")
    try:
        fp.seek(member.header_offset)
        header = fp.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise ArchiveError(f"member {member.name!r}: no local header at byte "
                               f"{member.header_offset}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        fp.seek(member.header_offset + 30 + name_len + extra_len)
        raw = fp.read(min(member.compressed, limit * 2 + 1024))
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"member {member.name!r} unreadable: {exc}") from None
    if member.method == zipfile.ZIP_STORED:
        return raw[:limit + 1]
    if member.method == zipfile.ZIP_DEFLATED:
        try:
            out = zlib.decompressobj(-15).decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ArchiveError(f"member {member.name!r}: damaged deflate data: {exc}") from None
        if len(out) > limit:
            raise ArchiveError(f"member {member.name!r} expands beyond {limit:,} bytes "
                               "(zip bomb?)")
        return out
    raise ArchiveError(f"member {member.name!r}: compression method {member.method} is not "
                       "read by torch either")


def read_zip_head(fp: BinaryIO, member: Member, n: int = 64) -> bytes:
    """The first ``n`` expanded bytes of ``member`` (for content sniffing), b"" on failure."""
    try:
        fp.seek(member.header_offset)
        header = fp.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            return b""
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        fp.seek(member.header_offset + 30 + name_len + extra_len)
        raw = fp.read(min(member.compressed, 1 << 16))
        if member.method == zipfile.ZIP_STORED:
            return raw[:n]
        if member.method == zipfile.ZIP_DEFLATED:
            return zlib.decompressobj(-15).decompress(raw, n)
    except (OSError, ValueError, zlib.error):
        return b""
    return b""


def is_zip(fp: BinaryIO) -> bool:
    """True when ``fp`` has a zip end-of-central-directory record."""
    try:
        return zipfile.is_zipfile(fp)
    except ZIP_ERRORS:  # is_zipfile itself raises BadZipFile for a "spans disks" record
        return False


def tar_members(data: bytes) -> list[tuple[str, bytes | None, str]]:
    """(name, bytes or None, kind) of each member of a tar archive held in ``data``.

    kind is ``file``, ``dir``, ``link`` or ``other``; bytes only for regular files within
    the member limit (None otherwise).

    Raises:
        ArchiveError: not a readable tar archive.
    """
    out: list[tuple[str, bytes | None, str]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for i, info in enumerate(tf):
                if i >= MAX_MEMBERS:
                    raise ArchiveError(f"more than {MAX_MEMBERS} members")
                if info.isfile():
                    blob = None
                    if info.size <= MEMBER_LIMIT:
                        fh = tf.extractfile(info)
                        blob = fh.read(MEMBER_LIMIT + 1) if fh else None
                    out.append((info.name, blob, "file"))
                elif info.isdir():
                    out.append((info.name, None, "dir"))
                elif info.issym() or info.islnk():
                    out.append((info.name, info.linkname.encode("utf-8", "replace"), "link"))
                else:
                    out.append((info.name, None, "other"))
    except (tarfile.TarError, OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"broken tar archive: {exc}") from None
    return out


def link_escapes(member_name: str, target: str) -> bool:
    """True when a tar link ``member_name -> target`` points outside the archive's root."""
    if target.startswith("/") or _DRIVE.match(target):
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(member_name), target))
    return joined == ".." or joined.startswith("../")


def looks_like_tar(head: bytes) -> bool:
    """ustar magic at byte 257."""
    return len(head) >= 262 and head[257:262] == b"ustar"
