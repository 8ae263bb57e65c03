"""``keishiki scan``: is a model file safe to load?  Judged by reading it, never by loading it.

Pickles (any protocol, concatenated, truncated, inside zip/tar archives at any depth, torch
legacy files), TorchScript code, Keras Lambda layers, ONNX external-data paths, archive
member names and folder symlinks are checked; every global a pickle names is judged
against an allowlist of what legitimate checkpoints use (see :mod:`.allowlist`).

>>> report = keishiki.scan("suspicious.pt")
>>> report.verdict, [f.global_ for f in report.findings if f.severity == "dangerous"]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# the formats whose files can carry code or pickles (keishiki info shows their verdict)
from ..formats.registry import CODE_BEARING
from .findings import FileReport, Finding, ScanReport

_CACHE: dict[tuple, ScanReport] = {}


def scan(*paths: str | os.PathLike) -> ScanReport:
    """Scan files and folders for code that would run when they are loaded.

    Args:
        paths: files or folders (folders are walked; archives are opened at any depth).

    Returns:
        A :class:`ScanReport`: ``.verdict`` (``safe``/``unknown``/``dangerous``/``error``),
        ``.findings`` (each with file, member, offset, opcode, global, severity, reason),
        ``.exit_code()``.

    Raises:
        KeishikiError: a path does not exist.  Damaged files do not raise: they are
        reported as errors in the report (what was seen up to the damage is still judged).
    """
    from ..hub import is_hf_path
    from .scanner import scan_paths

    remote = [p for p in paths if is_hf_path(p)]
    report = scan_paths([p for p in paths if not is_hf_path(p)])
    if remote:  # hf://org/name: judged from byte ranges, without downloading the weights
        from ..hub.remote_scan import scan_remote  # noqa: PLC0415 - imports huggingface_hub

        for path in remote:
            found = scan_remote(str(path))
            report.files.extend(found.files)
            report.remote = found.remote  # type: ignore[attr-defined]
    return report


def cached_scan(path: Path) -> ScanReport:
    """:func:`scan` of one file, remembered in this process by what identifies its bytes:
    ``info`` and the load gate ask for the same verdict.

    The key holds the inode and the change time (ctime) beside size and mtime: a file
    rewritten in place with its old size and mtime (``os.utime`` sets those, nothing sets
    ctime) is scanned again.  Folders are always scanned anew: a file inside one can change
    without the folder's own times changing.
    """
    try:
        st = path.stat()
        key = (
            None
            if path.is_dir()
            else (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        )
    except OSError:
        key = None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    report = scan(path)
    if key is not None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = report
    return report


def summary_for(src: Any, info: Any) -> dict | None:
    """The compact scan verdict that ``keishiki info`` shows, for formats that can carry code.

    Args:
        src: the :class:`~keishiki.core.source.Source` being inspected.
        info: its :class:`~keishiki.core.model.ModelInfo` (only ``format`` and ``variant`` used).

    Returns:
        ``{"verdict", "findings", "dangerous": [...], "unknown": [...]}`` or None for
        pure-data formats (safetensors, gguf, ...).  Every ONNX file is scanned: the reader
        lists initializers and Constant values, but onnx loads external data for sparse
        initializers and any node's tensor attributes too, which the scan checks.
    """
    fmt = getattr(info, "format", None)
    if fmt not in CODE_BEARING:
        return None
    try:
        report = cached_scan(Path(src.path))
    except Exception as exc:  # info must work on any file: a scan failure is shown, not raised
        return {
            "verdict": "error",
            "findings": 0,
            "dangerous": [],
            "unknown": [],
            "errors": [f"{type(exc).__name__}: {exc}"],
        }
    unsafe = [f for f in report.findings if f.severity != "safe"]
    out = {
        "verdict": report.verdict,
        "findings": len(unsafe),
        "dangerous": report.globals_by_severity("dangerous"),
        "unknown": report.globals_by_severity("unknown"),
    }
    errors = [e for fr in report.files for e in fr.errors]
    if errors:
        out["errors"] = errors[:5]
    return out


__all__ = ["scan", "summary_for", "ScanReport", "FileReport", "Finding", "CODE_BEARING"]
