"""The two gates every model passes before a third-party loader sees it.

**Path gate.**  A loader (transformers, ONNX Runtime, torch) opens the files a model's folder
names: shards from an index, tokenizer files, configs, external data.  Each of them must
resolve, symlinks followed, inside the model's folder; otherwise the loader would read a file
the user never handed over (a symlinked shard pointing at ``~/.ssh/id_rsa`` converts it byte
for byte).  :func:`inside` checks one name, :func:`check_tree` a whole folder before it is
handed to a loader.  The one sanctioned way out is a Hugging Face cache snapshot, whose files
are symlinks into the same repository's ``blobs/`` (``models--org--name/snapshots/<rev>/``).

**Load gate.**  :func:`admit` asks the scanner first and refuses ``dangerous`` and ``unknown``
alike (and a file the scanner could not read in full) unless the caller trusts the model:
an ``unknown`` verdict means code keishiki cannot vouch for, and code is what runs.

Every command and the Python API go through these two functions; nothing else decides.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UnsafeFile
from .source import MAX_JSON_BYTES, read_regular

MAX_SHARDS = 10_000  # distinct shard files an index may name (real ones: a few hundred)

if TYPE_CHECKING:
    from .._scan.findings import ScanReport

_DRIVE = re.compile(r"^[A-Za-z]:")
_HF_REPO = re.compile(r"^(models|datasets|spaces)--.+")
TRUST_HINT = "trust_remote_code=True loads it anyway"


def model_root(path: Path) -> Path:
    """The folder a model's files must stay in: the folder itself, or a file's folder."""
    return path if path.is_dir() else path.parent


def _cache_blobs(root_real: Path) -> Path | None:
    """``<repo>/blobs`` when ``root_real`` (resolved) is (inside) a Hugging Face cache
    snapshot, and ``blobs`` is the repository's own real folder: a ``blobs`` that is itself a
    symlink would make anything it points at "inside"."""
    for folder in (root_real, *root_real.parents):
        parent = folder.parent
        if parent.name == "snapshots" and _HF_REPO.match(parent.parent.name):
            blobs = parent.parent / "blobs"
            if blobs.is_symlink() or not blobs.is_dir():
                return None
            return blobs
    return None


def escape_reason(root: Path, rel: str | os.PathLike) -> str | None:
    """Why ``rel`` (a name inside ``root``) leads outside the model's folder, or None.

    Absolute names, drive letters, NUL bytes (C loaders cut the path there), ``..`` and
    symlinks that resolve outside ``root`` are reasons; a symlink of a Hugging Face cache
    snapshot into its own repository's ``blobs/`` is not.
    """
    rel = os.fspath(rel)
    if not rel or os.path.isabs(rel) or rel.startswith(("\\", "/")) or _DRIVE.match(rel):
        return f"{rel!r} is an absolute or empty path"
    if "\0" in rel:
        return f"{rel!r} holds a NUL byte (C loaders cut the path there)"
    root_real = root.resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return f"{rel!r} is a symlink loop"
    if target.is_relative_to(root_real):
        return None
    blobs = _cache_blobs(root_real)
    if blobs is not None and target.parent == blobs:
        # a blob is a file huggingface_hub wrote: a FIFO or device there would hang or feed
        # a loader forever
        if target.exists() and not target.is_file():
            return f"{rel!r} leads to {target}, a cache blob that is not a regular file"
        return None
    return f"{rel!r} resolves to {target}, outside the model's folder {root}"


def inside(root: Path, rel: str | os.PathLike) -> Path:
    """``root / rel`` when it stays inside the model's folder (see :func:`escape_reason`).

    Raises:
        UnsafeFile: the name leads outside ``root`` (exit 1: a finding, as every escape is).
    """
    reason = escape_reason(root, rel)
    if reason:
        raise UnsafeFile(root, f"refuses {reason}")
    return root / rel


def tree_escapes(path: Path, recursive: bool = True) -> list[tuple[str, str]]:
    """(name, reason) for every way the model at ``path`` leads a loader out of its folder.

    For a folder: every symlink under it (files and folders, at any depth, or only its own
    entries when not ``recursive``: the config and tokenizer beside a single model file)
    and every file a ``*.index.json`` weight map names.  A file is what the user named: only
    an index file's own weight map is read.  ONNX external data is judged by the scanner,
    which parses the graph.
    """
    root = model_root(path)
    out: list[tuple[str, str]] = []
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            if not recursive:
                dirnames[:] = [d for d in dirnames if Path(dirpath, d).is_symlink()]
            for name in sorted(filenames + dirnames):
                p = Path(dirpath, name)
                rel = p.relative_to(root).as_posix()
                if p.is_symlink():
                    reason = escape_reason(root, rel)
                    if reason:
                        out.append((rel, f"symlink {reason}"))
                elif name.endswith(".index.json") and p.is_file():
                    out.extend((rel, why) for _shard, why in index_escapes(root, p))
    elif path.name.endswith(".index.json"):
        out.extend((path.name, why) for _shard, why in index_escapes(root, path))
    return out


def index_escapes(root: Path, index: Path) -> list[tuple[str, str]]:
    """(shard name, reason) for each file a sharded checkpoint's index names outside
    ``root``; ("", reason) when the index itself cannot be read (a loader would fail)."""
    try:
        if index.stat().st_size > MAX_JSON_BYTES:
            return [("", "shard index larger than 64 MiB")]
        weight_map = json.loads(read_regular(index, MAX_JSON_BYTES)).get("weight_map") or {}
        shards = sorted({str(v) for v in weight_map.values()})
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        return [("", f"unreadable shard index ({type(exc).__name__})")]
    if len(shards) > MAX_SHARDS:  # each is resolved on disk, by every reader of the folder
        return [("", f"shard index names {len(shards):,} shard files (at most {MAX_SHARDS:,})")]
    folder = index.parent.relative_to(root)
    out = []
    for shard in shards:
        if "\0" in shard:
            reason = f"{shard!r}, which holds a NUL byte (C loaders cut the path there)"
        elif ".." in Path(shard.replace("\\", "/")).parts:
            reason = f"{shard!r}, which climbs out with '..'"
        else:
            reason = escape_reason(
                root, shard if os.path.isabs(shard) else (folder / shard).as_posix()
            )
        if reason:
            out.append((shard, f"weight_map names {reason}"))
    return out


def check_tree(path: Path, recursive: bool = True) -> None:
    """The path gate for a whole model: raise when any of its files leads outside it
    (``recursive``: as :func:`tree_escapes`).

    Raises:
        UnsafeFile: a symlink or an index entry leaves the model's folder (exit 1: a finding).
    """
    escapes = tree_escapes(path, recursive)
    if escapes:
        name, reason = escapes[0]
        more = f" (and {len(escapes) - 1} more)" if len(escapes) > 1 else ""
        raise UnsafeFile(path, f"{name}: {reason}{more}; a loader would read that file")


def verdict(path: Path) -> "ScanReport":
    """The scan report of ``path`` (cached by path, size and mtime within the process)."""
    from .._scan import cached_scan

    return cached_scan(path)


def problem(report: "ScanReport", unread_blocks: bool = True) -> str | None:
    """The first reason the scan gives not to load: a dangerous finding, then an unknown
    one, then (when ``unread_blocks``) a part the scanner could not read.  None otherwise."""
    for severity in ("dangerous", "unknown"):
        found = [f for f in report.findings if f.severity == severity]
        if found:
            f = found[0]
            where = f"{Path(f.file).name}{'!' + f.member if f.member else ''}"
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            subject = f.global_ or f.opcode
            what = f.reason if f.reason.startswith(subject) else f"{subject}: {f.reason}"
            return f"{severity}: {where}: {what}{more}"
    errors = [e for fr in report.files for e in fr.errors] if unread_blocks else []
    if errors:
        return f"not scanned in full, so what it runs is not known: {errors[0]}"
    return None


def admit(
    path: str | os.PathLike,
    *,
    trust: bool = False,
    purpose: str = "load",
    unread_blocks: bool = True,
) -> "ScanReport | None":
    """The load gate: refuse to hand ``path`` to a loader unless it scans safe or is trusted.

    The path gate (:func:`check_tree`) applies whatever ``trust`` says: trusting a model's
    code is not permission to read files outside it.

    Args:
        path: the model file or folder a loader is about to open.
        trust: the user passed ``trust_remote_code=True`` / ``--trust-remote-code``.
        purpose: what is about to happen, for the message ("run", "convert", ...).
        unread_blocks: a part the scanner could not read refuses the load too (a loader
            that runs code may run what was not read); False for keishiki's own readers,
            which run nothing and refuse a broken file themselves, in its own words.

    Returns:
        The scan report (None when trusted: nothing was scanned).

    Raises:
        UnsafeFile: a path leaves the folder, or the verdict is dangerous/unknown/incomplete
            and ``trust`` is False; the message names the finding.
    """
    path = Path(path)
    check_tree(path)
    if trust:
        return None
    report = verdict(path)
    reason = problem(report, unread_blocks)
    if reason:
        raise UnsafeFile(path, f"not loaded to {purpose}: {reason} ({TRUST_HINT})")
    return report
