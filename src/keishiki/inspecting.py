"""``keishiki.inspect``: identify a model, read it lazily, and add the scan verdict.

This sits above both :mod:`keishiki.formats` (sniff and read) and :mod:`keishiki._scan`
(which itself uses the format readers), so neither of those imports the other's caller:
formats know nothing of scanning, and the scan verdict is added here.
"""

from __future__ import annotations

import os

from ._scan import scan, summary_for
from .core.gate import check_tree
from .core.model import ModelInfo
from .core.source import Source
from .errors import CorruptFile, UnknownFormat
from .formats import Match, identify, read
from .formats.registry import CODE_BEARING
from .hub import is_hf_path


def inspect(path: str | os.PathLike) -> ModelInfo:
    """Identify ``path`` and read what it holds, lazily and without running its code.

    >>> info = inspect("model.safetensors"); info.format, info.n_parameters

    ``hf://org/name[@rev][/file]`` reads a Hub repository's config and weight headers with
    range requests, without downloading it (:mod:`keishiki.hub.remote`).

    Raises:
        UnknownFormat: not a model file keishiki knows.
        CorruptFile: the format was recognised but its bytes are broken.
        UnsafeFile: a folder whose files lead outside it (a symlink or an index entry out:
            the path gate, :func:`keishiki.core.gate.check_tree`).
        HubError: an ``hf://`` repository, revision or file the Hub cannot give.
    """
    if is_hf_path(path):
        from .hub.remote import inspect_remote  # noqa: PLC0415 - imports huggingface_hub

        return inspect_remote(str(path))

    with Source(path) as src:
        if src.is_dir:
            check_tree(src.path)
        try:
            match = identify(src)
        except UnknownFormat as exc:
            if not src.is_dir:
                _add_verdict(exc, src, None)
            raise
        try:
            info = read(src, match)
        except CorruptFile as exc:
            _add_verdict(exc, src, match)
            raise
        info.path = str(path)
        # the scan verdict for formats that can carry code (pickles, TorchScript, Keras,
        # ONNX external data); None for pure-data formats
        info.safety = summary_for(src, info)
        return info


def _add_verdict(exc: CorruptFile | UnknownFormat, src: Source, match: Match | None) -> None:
    """A file a reader rejects (or no sniffer recognises) may still be a working exploit for
    a laxer loader (torch ignores a bad CRC, a truncated pickle runs up to the break, a zip
    with a pickle inside is still unzipped): name what scan finds."""
    if (match is not None and match.format not in CODE_BEARING) or src.is_dir:
        return
    try:
        report = scan(src.path)
    except Exception:  # the error being raised already says what is wrong
        return
    dangerous = sorted(
        {f.global_ for f in report.findings if f.severity == "dangerous" and f.global_}
    )
    if report.verdict == "dangerous":
        names = ", ".join(dangerous[:3]) or "see keishiki scan"
        exc.message += f" — and keishiki scan calls it DANGEROUS ({names}): do not load it"
