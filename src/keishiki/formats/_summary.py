"""Helpers shared by the summary-only formats (TFLite, TensorFlow SavedModel, Core ML)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MAX_FILES = 1000


def list_files(root: Path, limit: int = MAX_FILES) -> list[dict[str, Any]]:
    """[{path, size}] of the regular files under ``root`` (relative, sorted, symlinks skipped,
    at most ``limit`` entries)."""
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if p.is_symlink() or not p.is_file():
                continue
            out.append({"path": p.relative_to(root).as_posix(), "size": p.stat().st_size})
            if len(out) >= limit:
                return out
    return out


def varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """A protobuf varint at ``pos``: (value, next position), or None when malformed."""
    value, shift = 0, 0
    while pos < len(data) and shift < 64:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
    return None


def first_varint_field(data: bytes, field: int = 1) -> int | None:
    """The value of a protobuf message's leading varint field ``field``, or None."""
    if not data or data[0] != (field << 3):
        return None
    got = varint(data, 1)
    return None if got is None else got[0]
