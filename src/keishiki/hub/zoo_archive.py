"""Extract a zoo ``.tar.gz`` (a model with its ``test_data_set_*`` folders) without letting
it write anywhere else.

The archive's sha256 has been checked against the manifest, but a manifest only says what
the repository's owner published: the archive is still untrusted input.  Before a byte is
written, every member is checked: a plain relative name (no absolute path, drive letter,
backslash, ``..`` or NUL), a regular file, folder or link (no devices, FIFOs), a link whose
target stays inside the folder, and bounded totals (member count, declared bytes, free
disk space).  Python's own ``tarfile`` ``data`` filter then runs as a second guard (it also
drops set-uid bits and refuses what a symlink chain would resolve outside).  onnx.hub
refused traversal and links the same way (``onnx.utils._extract_model_safe``).

The files land in a temporary folder beside the target that is renamed into place when
complete (:func:`keishiki.core.atomic.atomic_output`): a refused or interrupted extraction
leaves nothing under the target name.
"""

from __future__ import annotations

import gzip
import posixpath
import re
import tarfile
import zlib
from pathlib import Path

from ..core.atomic import atomic_output, check_free_space
from ..errors import HubError

MAX_MEMBERS = 100_000
MAX_BYTES = 64 << 30  # declared bytes of all members (the zoo's largest archive: ~1.4 GB)


def _name_problem(name: str) -> str | None:
    parts = name.split("/")
    if not name or "\0" in name or "\\" in name:
        return "a name with a NUL or a backslash, or an empty name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in parts:
        return "a '..' that climbs out of the folder"
    return None


def _link_problem(member: tarfile.TarInfo) -> str | None:
    """Why a link member would lead outside the folder (None: it stays inside)."""
    target = member.linkname
    if (
        not target
        or "\0" in target
        or "\\" in target
        or target.startswith("/")
        or re.match(r"^[A-Za-z]:", target)
    ):
        return f"a link to {target!r} (absolute or malformed)"
    # a hard link names another member from the archive's root; a symlink is relative to
    # the folder holding it
    base = "" if member.islnk() else posixpath.dirname(member.name.rstrip("/"))
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        return f"a link to {target!r}, outside the folder"
    return None


def check_members(
    tar: tarfile.TarFile, where: str, max_bytes: int = MAX_BYTES
) -> tuple[list[tarfile.TarInfo], int]:
    """(the members, their declared bytes) when every one of them is safe to extract.

    Raises:
        HubError: a member escapes, is not a file, folder or link, or the archive holds
            more than :data:`MAX_MEMBERS` members or ``max_bytes`` bytes.
    """
    members, total = [], 0
    for member in tar:
        problem = _name_problem(member.name)
        if problem is None and not (
            member.isreg() or member.isdir() or member.issym() or member.islnk()
        ):
            problem = "not a regular file, folder or link (a device or FIFO)"
        if problem is None and (member.issym() or member.islnk()):
            problem = _link_problem(member)
        if problem:
            raise HubError(
                f"{where}: archive member {member.name!r} is {problem}: refused, nothing extracted"
            )
        members.append(member)
        total += member.size if member.isreg() else 0
        if len(members) > MAX_MEMBERS or total > max_bytes:
            raise HubError(
                f"{where}: the archive holds more than {MAX_MEMBERS:,} members or "
                f"{max_bytes:,} bytes: refused, nothing extracted"
            )
    return members, total


def extract(archive: Path, target: Path, where: str, max_bytes: int = MAX_BYTES) -> Path:
    """Extract ``archive`` into the new folder ``target`` (atomically) and return ``target``.

    Raises:
        HubError: a member is refused (see :func:`check_members`), or the archive is not a
            readable tar.
        InvalidRequest: not enough free disk space, or ``target`` already exists.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members, total = check_members(tar, where, max_bytes)
            check_free_space(target.parent, total)
            with atomic_output(target, folder=True) as tmp:
                tar.extractall(tmp, members=members, filter="data")
    except tarfile.FilterError as exc:  # the second guard caught what the first did not
        raise HubError(
            f"{where}: archive member refused by tarfile's data filter ({exc}): nothing extracted"
        ) from None
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else "truncated"
        raise HubError(
            f"{where}: not a readable .tar.gz ({type(exc).__name__}: {detail})"
        ) from None
    return target
