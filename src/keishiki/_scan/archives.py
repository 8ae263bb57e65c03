"""Zip and tar archives read the way their loaders read them, not the way ``zipfile`` refuses them.

torch's zip reader (miniz) ignores CRCs, the "encrypted" flag bit and local-header name
mismatches; ``zipfile`` raises on each, and scanners that use it crash and report nothing
while ``torch.load`` happily unpickles the member (picklescan GHSA-w8jq-xcqf-f792,
GHSA-7q5r-7gvp-wc82, CVE-2025-10156).  And the two find the central directory differently
(:mod:`.miniz`), so a zip is listed by both: every member either reader sees is scanned
(numpy and Keras open zips with ``zipfile``, torch with miniz).  Bytes are read straight from
each local header, with the expansion bounded (zip bombs).
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ..core.source import BOMB_MIN_BYTES, MAX_RATIO, ZIP_ERRORS
from . import miniz

MEMBER_LIMIT = 256 * 1024 * 1024  # bytes one member may expand to before it is refused
MAX_MEMBERS = 100_000
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(Exception):
    """A member or archive that cannot be read (broken, bomb, unsupported)."""


@dataclass
class Member:
    """One archive member: its name, sizes, and how to read it."""

    name: str
    size: int  # declared expanded size
    compressed: int
    method: int
    header_offset: int
    is_dir: bool = False
    is_link: bool = False
    raw_name: bytes = b""  # the name's bytes as stored (miniz compares these)
    seen_by: str = ""  # which directory lists it: "miniz", "zipfile" or both


@dataclass
class ZipListing:
    """A zip's members as miniz (torch) and ``zipfile`` (numpy, Keras) list them."""

    members: list[Member]  # the union, each local entry once, miniz's order first
    miniz: list[Member] | None  # miniz's directory in its order (None: miniz refuses)
    miniz_error: str = ""
    zipfile_error: str = ""


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


# ``zipfile``'s reading of one file's directory, offered by a reader that opened the same
# file with ``zipfile`` just before scanning it (``inspect`` of a torch zip): (identity of
# the file, its ZipInfo list).  Taken once, and only by a scan of the same file, unchanged:
# same device, inode, size, modification and change times (a rewrite changes the ctime).
# miniz's directory (torch's view) is always read afresh, so even a directory rewritten in
# place between the two readings is not missed: the listings then differ, a finding.
_SHARED_DIRECTORY: list[tuple[tuple, list[zipfile.ZipInfo]]] = []


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def share_directory(path: str | os.PathLike, infos: list[zipfile.ZipInfo]) -> None:
    """Offer ``zipfile.ZipFile(path).infolist()`` to the next scan of ``path``, which then
    takes it instead of reading the directory again (the same parser on the same bytes)."""
    try:
        key = _identity(os.stat(path))
    except OSError:
        return  # gone: the scan reports it
    _SHARED_DIRECTORY[:] = [(key, infos)]


def _zipfile_infos(fp: BinaryIO) -> list[zipfile.ZipInfo]:
    """``zipfile.ZipFile(fp).infolist()``, or the same list already read (see above)."""
    if _SHARED_DIRECTORY:
        known, infos = _SHARED_DIRECTORY.pop()
        try:
            if known == _identity(os.fstat(fp.fileno())):
                return infos
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass  # not a file of its own (an archive member in memory)
    return zipfile.ZipFile(fp).infolist()


def _zipfile_members(fp: BinaryIO) -> list[Member]:
    infos = _zipfile_infos(fp)
    if len(infos) > MAX_MEMBERS:
        raise ArchiveError(f"{len(infos)} members (limit {MAX_MEMBERS})")
    # ZipInfo.is_dir() indexes filename[-1]: an empty member name (a damaged directory)
    # must not raise IndexError
    return [
        Member(
            i.filename,
            i.file_size,
            i.compress_size,
            i.compress_type,
            i.header_offset,
            i.filename.endswith("/"),
            raw_name=i.orig_filename.encode("utf-8", "surrogateescape"),
            seen_by="zipfile",
        )
        for i in infos
    ]


def _miniz_members(fp: BinaryIO) -> list[Member]:
    fp.seek(0, 2)
    entries = miniz.entries(fp, fp.tell())
    return [
        Member(
            e.name,
            e.size,
            e.compressed,
            e.method,
            e.header_offset,
            e.name.endswith("/"),
            raw_name=e.raw_name,
            seen_by="miniz",
        )
        for e in entries
    ]


def list_zip(fp: BinaryIO) -> ZipListing:
    """The members of the zip in ``fp`` as both miniz and ``zipfile`` list them.

    Raises:
        ArchiveError: neither reader finds a directory.
    """
    try:
        mz: list[Member] | None = _miniz_members(fp)
        mz_error = ""
    except (miniz.MinizError, OSError, ValueError, struct.error) as exc:
        mz, mz_error = None, f"miniz (torch) refuses it: {exc}"
    try:
        zf, zf_error = _zipfile_members(fp), ""
    except ArchiveError:
        raise
    except ZIP_ERRORS as exc:
        zf, zf_error = [], f"zipfile refuses it: {exc}"
    if mz is None and zf_error:
        raise ArchiveError(f"broken zip directory ({mz_error}; {zf_error})")
    # an entry of one reader and one of the other are the same member when they point at
    # the same local header with the same sizes and method (their names are decoded each
    # its own way).  Two entries of one reader pointing at one header are two members: the
    # n-th of each reader is paired, so a second name for the same bytes (``data.pkl``
    # hiding behind a storage's or a folder's entry) is listed, not folded away
    union: dict[tuple, Member] = {}
    nth: dict[tuple, int] = {}
    for m in (mz or []) + zf:
        entry = (m.header_offset, m.compressed, m.size, m.method, m.seen_by)
        nth[entry] = nth.get(entry, 0) + 1
        key = (*entry[:4], nth[entry])
        if key in union:
            union[key].seen_by = (
                "miniz+zipfile" if union[key].seen_by != m.seen_by else union[key].seen_by
            )
        else:
            # a shallow copy (copy.copy goes through __reduce_ex__, dataclasses.replace
            # through __init__: both several times slower)
            union[key] = twin = object.__new__(Member)
            twin.__dict__.update(m.__dict__)
    return ZipListing(list(union.values()), mz, mz_error, zf_error)


def zip_members(fp: BinaryIO) -> list[Member]:
    """Every member of the zip in ``fp`` that miniz or ``zipfile`` lists (see :func:`list_zip`).

    Raises:
        ArchiveError: not a readable zip directory, or absurdly many members.
    """
    return list_zip(fp).members


def read_zip_member(fp: BinaryIO, member: Member, limit: int = MEMBER_LIMIT) -> bytes:
    """The expanded bytes of ``member`` (at most ``limit + 1`` bytes are produced).

    Reads from the local header like torch does: no CRC check, flags ignored.

    Raises:
        ArchiveError: bad local header, unsupported compression, damaged or oversized data.
    """
    if member.size > limit:
        raise ArchiveError(
            f"member {member.name!r} expands to {member.size:,} bytes (limit {limit:,}; zip bomb?)"
        )
    if (
        member.compressed
        and member.size / max(member.compressed, 1) > MAX_RATIO
        and member.size > BOMB_MIN_BYTES
    ):
        raise ArchiveError(
            f"member {member.name!r} expands {member.size // member.compressed}x "
            f"({member.size:,} bytes): zip bomb"
        )
    try:
        fp.seek(member.header_offset)
        header = fp.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise ArchiveError(
                f"member {member.name!r}: no local header at byte {member.header_offset}"
            )
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        fp.seek(member.header_offset + 30 + name_len + extra_len)
        # a stored member: zipfile reads its compressed size, miniz (torch) its expanded size,
        # which a crafted directory can make differ: read both
        stored_len = (
            max(member.compressed, member.size) if member.method == 0 else member.compressed
        )
        raw = fp.read(min(stored_len, limit * 2 + 1024))
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"member {member.name!r} unreadable: {exc}") from None
    if member.method == zipfile.ZIP_STORED:
        return raw[: limit + 1]
    if member.method == zipfile.ZIP_DEFLATED:
        try:
            out = zlib.decompressobj(-15).decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ArchiveError(f"member {member.name!r}: damaged deflate data: {exc}") from None
        if len(out) > limit:
            raise ArchiveError(f"member {member.name!r} expands beyond {limit:,} bytes (zip bomb?)")
        return out
    if member.method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        return _expand_other(raw, member, limit)
    raise ArchiveError(
        f"member {member.name!r}: compression method {member.method} is read "
        "neither by torch nor by zipfile"
    )


def _expand_other(raw: bytes, member: Member, limit: int) -> bytes:
    """bzip2 and LZMA members: torch cannot read them but ``zipfile`` (np.load of an .npz,
    Keras) can, so they are expanded too, bounded like deflate."""
    import bz2  # noqa: PLC0415 - rare
    import lzma  # noqa: PLC0415

    try:
        if member.method == zipfile.ZIP_BZIP2:
            out = bz2.BZ2Decompressor().decompress(raw, limit + 1)
        else:  # zipfile's LZMA: 2-byte version, 2-byte properties size, properties, raw LZMA1
            (psize,) = struct.unpack("<H", raw[2:4])
            filt = lzma._decode_filter_properties(lzma.FILTER_LZMA1, raw[4 : 4 + psize])
            out = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[filt]).decompress(
                raw[4 + psize :], limit + 1
            )
    except (OSError, ValueError, EOFError, lzma.LZMAError, struct.error) as exc:
        raise ArchiveError(f"member {member.name!r}: damaged compressed data: {exc}") from None
    if len(out) > limit:
        raise ArchiveError(f"member {member.name!r} expands beyond {limit:,} bytes (zip bomb?)")
    return out


def read_zip_head(fp: BinaryIO, member: Member, n: int = 64) -> bytes:
    """The first ``n`` expanded bytes of ``member`` (for content sniffing), b"" on failure."""
    try:
        fp.seek(member.header_offset)
        header = fp.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            return b""
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        fp.seek(member.header_offset + 30 + name_len + extra_len)
        if member.method == zipfile.ZIP_STORED:
            return fp.read(min(member.compressed, n))
        raw = fp.read(min(member.compressed, 1 << 16))
        if member.method == zipfile.ZIP_DEFLATED:
            return zlib.decompressobj(-15).decompress(raw, n)
        if member.method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
            return _expand_other(raw, member, 1 << 20)[:n]
    except (OSError, ValueError, zlib.error, ArchiveError):
        return b""
    return b""


def is_zip(fp: BinaryIO) -> bool:
    """True when ``fp`` has a zip end-of-central-directory record that ``zipfile`` or miniz
    (torch) finds."""
    try:
        if zipfile.is_zipfile(fp):
            return True
    except ZIP_ERRORS:  # is_zipfile itself raises BadZipFile for a "spans disks" record
        pass
    try:
        fp.seek(0, 2)
        return miniz.has_eocd(fp, fp.tell())
    except (OSError, ValueError):
        return False


def tar_members(data: bytes) -> list[tuple[str, bytes | None, str]]:
    """(name, bytes or None, kind) of each member of a tar archive held in ``data``.

    kind is ``file``, ``dir``, ``link`` or ``other``; bytes only for regular files within
    the member limit (None otherwise).

    Raises:
        ArchiveError: not a readable tar archive.
    """
    import tarfile  # (only for tars: ~1 ms of every scan's start-up)

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
    """A tar header block as ``tarfile`` accepts it: the ``ustar`` magic, or (an old v7 tar,
    as torch <= 0.1.10 wrote with ``tarfile``) a name and a valid header checksum."""
    if len(head) < 512:
        return False
    if head[257:262] == b"ustar":
        return True
    field = head[148:156].split(b"\0", 1)[0].strip(b" ")
    if not head[:1].strip(b"\0") or not field or any(c not in b"01234567" for c in field):
        return False
    block = head[:148] + b" " * 8 + head[156:512]
    signed = sum(struct.unpack("148b8x356b", head[:512])) + 256
    return int(field, 8) in (sum(block), signed)
