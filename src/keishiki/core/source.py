"""A model on disk (one file or a folder), read in small pieces and never consumed.

Sniffers and readers share one :class:`Source` so the first bytes, the zip directory
and JSON files are read once.  Nothing here reads tensor bytes unless asked for an
explicit range, and nothing resolves a path outside the model's folder.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import zipfile
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import CorruptFile, KeishikiError, PathNotFound

HEAD_BYTES = 64 * 1024
# JSON sidecars (config.json, index files, tokenizer configs) larger than this are refused:
# a 2 GB "config.json" is an attack or a mistake, not a config.
MAX_JSON_BYTES = 64 * 1024 * 1024

# opening a FIFO to read waits for a writer: a file a folder held may be swapped for one
NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (a link is followed), at most ``limit``.

    Raises:
        OSError: it cannot be opened.
        ValueError: it is not a regular file (a FIFO or device is not waited on) or holds
            more than ``limit`` bytes.
    """
    with os.fdopen(os.open(path, os.O_RDONLY | NONBLOCK), "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{os.fspath(path)} is not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{os.fspath(path)} holds more than {limit} bytes")
    return data


# What zipfile raises on a damaged or hostile central directory.  NotImplementedError is
# its answer to a "version needed" it does not know (one flipped byte makes 6.4), so it
# belongs here as much as BadZipFile does.
# a compressed member that expands more than MAX_RATIO times into more than BOMB_MIN_BYTES is
# a zip bomb: torch.save and Keras store members uncompressed, and deflate of real weights
# stays far below 1000:1 (only runs of one byte reach it)
MAX_RATIO = 1000
BOMB_MIN_BYTES = 16 << 20
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    ValueError,
    EOFError,
    NotImplementedError,
    struct.error,
    UnicodeDecodeError,
)


def check_expansion(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a zip member that would expand like a zip bomb (see :data:`MAX_RATIO`).

    Raises:
        CorruptFile: it claims more than ``MAX_RATIO`` times its compressed size, and more
            than :data:`BOMB_MIN_BYTES`.
    """
    if (
        info.compress_type != zipfile.ZIP_STORED
        and info.file_size > BOMB_MIN_BYTES
        and info.file_size > MAX_RATIO * max(info.compress_size, 1)
    ):
        raise CorruptFile(
            path,
            f"zip member {info.filename!r} expands {info.compress_size:,} "
            f"bytes into {info.file_size:,} (over {MAX_RATIO}:1): a zip bomb",
        )


def _check_readable_kind(path: Path) -> None:
    """Refuse what cannot be a model before anything opens it.

    A FIFO or a character device would block ``open()``/``read()`` forever (or never end),
    and a broken or looping symlink would otherwise surface as "not a model file".

    Raises:
        KeishikiError: missing path, broken/looping symlink, or not a file/folder.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeishikiError(f"{path}: symbolic link loop; point it at a real file") from None
        if path.is_symlink():
            raise KeishikiError(
                f"{path}: broken symbolic link (points to "
                f"{os.readlink(path)!r}, which does not exist)"
            ) from None
        if exc.errno == errno.ENOENT:
            raise PathNotFound(path) from None
        raise KeishikiError(f"{path}: cannot read: {exc.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise KeishikiError(
            f"{path}: not a regular file or folder (a pipe, socket or device); "
            f"give the model file itself"
        )


class Source:
    """A path to a model file or folder with cheap, cached, bounded reads.

    >>> src = Source("model.safetensors"); src.peek(8)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        _check_readable_kind(self.path)
        self._zip: zipfile.ZipFile | None = None

    # ---- identity -------------------------------------------------------------------------
    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def size(self) -> int:
        """File size, or the total size of the regular files in a folder (not following links)."""
        if not self.is_dir:
            return self.path.stat().st_size
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for f in files:
                p = Path(root, f)
                if not p.is_symlink():
                    total += p.stat().st_size
        return total

    # ---- bytes ----------------------------------------------------------------------------
    @cached_property
    def head(self) -> bytes:
        """Up to the first 64 KiB of a file (empty for folders)."""
        if self.is_dir:
            return b""
        with open(self.path, "rb") as fh:
            return fh.read(HEAD_BYTES)

    def peek(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer when the file is shorter)."""
        if n <= HEAD_BYTES:
            return self.head[:n]
        return self.read_at(0, n, exact=False)

    def read_at(self, offset: int, n: int, exact: bool = True) -> bytes:
        """``n`` bytes at ``offset``; raises CorruptFile when ``exact`` and the file is shorter."""
        if offset < 0 or n < 0 or (exact and offset + n > self.size):
            raise CorruptFile(
                self.path,
                f"needs {n} bytes at offset {offset} but the file has {self.size} bytes",
                offset=offset,
            )
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(n)
        if exact and len(data) != n:
            raise CorruptFile(self.path, f"short read ({len(data)} of {n} bytes)", offset=offset)
        return data

    # ---- zip archives ---------------------------------------------------------------------
    @property
    def looks_like_zip(self) -> bool:
        return self.head[:4] in (b"PK\x03\x04", b"PK\x05\x06")

    def zip(self) -> zipfile.ZipFile:
        """The file opened as a zip archive (directory only; members are read on demand)."""
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except ZIP_ERRORS as exc:
                raise CorruptFile(self.path, f"broken zip archive: {exc}") from None
        return self._zip

    @cached_property
    def zip_names(self) -> list[str]:
        """Member names of a zip file, [] when the file is not a readable zip."""
        if self.is_dir or not self.looks_like_zip:
            return []
        try:
            return self.zip().namelist()
        except CorruptFile:
            return []

    @cached_property
    def zip_name_set(self) -> frozenset[str]:
        """:attr:`zip_names` as a set, for membership tests in per-tensor loops."""
        return frozenset(self.zip_names)

    def read_member(self, name: str, limit: int = 256 * 1024 * 1024) -> bytes:
        """One zip member's bytes, refusing members that expand beyond ``limit`` (zip bombs)."""
        zf = self.zip()
        try:
            info = zf.getinfo(name)
        except KeyError:
            raise CorruptFile(self.path, f"zip member {name!r} is missing") from None
        if info.file_size > limit:
            raise CorruptFile(
                self.path, f"zip member {name!r} expands to {info.file_size} bytes (limit {limit})"
            )
        check_expansion(self.path, info)
        try:
            with zf.open(info) as fh:
                data = fh.read(limit + 1)
        except Exception as exc:  # ZIP_ERRORS, zlib.error and friends from a damaged stream
            raise CorruptFile(self.path, f"zip member {name!r} unreadable: {exc}") from None
        if len(data) > limit:
            raise CorruptFile(self.path, f"zip member {name!r} expands beyond {limit} bytes")
        return data

    # ---- folders --------------------------------------------------------------------------
    def child(self, rel: str) -> Path:
        """A path inside this folder (or beside this file); refuses anything that escapes it.

        Absolute paths, ``..`` components and symlinks that resolve outside the model's
        folder raise :class:`UnsafeFile` (ONNX external-data traversal, CVE-2024-27318);
        the rule is the path gate's (:func:`keishiki.core.gate.inside`).
        """
        from .gate import inside

        return inside(self.path if self.is_dir else self.path.parent, rel)

    def files(self) -> list[str]:
        """Names of the entries directly inside a folder, sorted ([] for a file)."""
        if not self.is_dir:
            return []
        return sorted(os.listdir(self.path))

    def has(self, rel: str) -> bool:
        """True when a regular file ``rel`` exists inside the folder."""
        try:
            return self.child(rel).is_file()
        except KeishikiError:
            return False

    def read_json(self, rel: str | None = None) -> Any:
        """Parse a JSON file (this file, or ``rel`` inside the folder), size-bounded."""
        path = self.path if rel is None else self.child(rel)
        if path.exists() and not path.is_file():  # a FIFO config.json would block forever
            raise CorruptFile(path, "not a regular file")
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CorruptFile(path, f"JSON file of {size} bytes exceeds {MAX_JSON_BYTES}")
        try:
            raw = read_regular(path, MAX_JSON_BYTES)  # (swapped for a FIFO since: not waited on)
        except ValueError as exc:
            raise CorruptFile(path, str(exc)) from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # (also ints past 4300 digits)
            raise CorruptFile(path, f"invalid JSON: {exc}") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Source({str(self.path)!r})"
