"""The compressed files ``joblib.load`` unpickles: it picks a decompressor by the first bytes
(joblib/numpy_pickle_utils.py ``_detect_compressor``, whatever the file's name) and
unpickles what comes out.  The scan does the same, bounded in size.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

MAX_OUT = 256 << 20  # the limit archive members have too
PROBE = 1 << 16  # decompressed bytes looked at before deciding to go on

# joblib's registry order: its "compat" format (ZF) first, then zlib, gzip, bz2, lzma, xz, lz4
_PREFIXES = (
    (b"ZF", "compat"),
    (b"x", "zlib"),
    (b"\x1f\x8b", "gzip"),
    (b"BZ", "bz2"),
    (b"]\x00", "lzma"),
    (b"\xfd7zXZ", "xz"),
    (b'\x04"M\x18', "lz4"),
)


class Undecodable(Exception):
    """The bytes do not decompress (joblib.load fails on them too)."""


def joblib_compression(head: bytes) -> str | None:
    """The compressor joblib.load would use for a file starting with ``head``."""
    for prefix, name in _PREFIXES:
        if head.startswith(prefix):
            return name
    return None


def _decompressor(kind: str):
    if kind == "zlib":
        return zlib.decompressobj(15)
    if kind == "gzip":
        return zlib.decompressobj(31)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "lzma":
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE)
    if kind == "xz":
        return lzma.LZMADecompressor(lzma.FORMAT_XZ)
    raise Undecodable(f"{kind}-compressed joblib files are not read by the scan")


def decompress(data, kind: str, limit: int = MAX_OUT, partial: bool = False) -> bytes:
    """Decompress ``data`` as joblib would, at most ``limit`` bytes (with ``partial``: the
    first ``limit`` bytes, without complaint about the rest).

    Raises:
        Undecodable: not that format, or a format the scan does not read (lz4, ZF).
        OverflowError: more than ``limit`` bytes come out (a bomb, or too big to judge).
    """
    try:
        out = _decompressor(kind).decompress(data, limit + 1)[: limit + (not partial)]
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as exc:
        raise Undecodable(f"{kind}: {exc}") from None
    if len(out) > limit and not partial:
        raise OverflowError(f"{kind} stream expands beyond {limit >> 20} MiB")
    return out
