"""Identify a model by content and read it lazily into a ModelInfo.

The formats themselves are declared in :mod:`keishiki.formats.registry` (one spec per
format, in one table): :func:`identify` runs their sniffers in the registry's sniff order
and :func:`read` the matched format's reader.  Each format module
(:class:`~keishiki.formats.registry.FormatModule`) exposes ``sniff(src) -> Match | None``
(cheap, never raises, never imports a heavy library) and ``read(src, match) -> ModelInfo``.
:func:`keishiki.inspect` (:mod:`keishiki.inspecting`) adds the scan verdict on top.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from ..core.source import Source
from ..errors import CorruptFile, KeishikiError, UnknownFormat
from .registry import (
    BY_ID,
    EXPORT_FORMATS,
    EXPORT_SUFFIXES,
    FORMATS,
    LOOKED_FOR,
    SNIFF_ORDER,
    FormatModule,
    FormatSpec,
    Match,
)

if (
    TYPE_CHECKING
):  # `keishiki scan` imports the registry: ModelInfo (and its display) only for readers
    from ..core.model import ModelInfo

# an optimum decoder folder holds several graphs: the one with the cache is run
ONNX_PREFERRED = (
    "model.onnx",
    "decoder_model_merged.onnx",
    "decoder_with_past_model.onnx",
    "decoder_model.onnx",
)


def export_folder_member(src: Source) -> tuple[str, Match] | None:
    """(file name, match) when a folder's model is one exported graph or archive
    (TorchScript, torch.export, ONNX) beside its config/tokenizer, as ``keishiki convert
    --to torchscript|onnx`` or optimum write it."""
    if not src.is_dir:
        return None
    names = [n for n in src.files() if n.lower().endswith(EXPORT_SUFFIXES) and src.has(n)]
    preferred = [n for n in ONNX_PREFERRED if n in names]
    if preferred:
        names = preferred[:1]
    if len(names) != 1:
        return None
    with Source(src.child(names[0])) as inner:
        for spec in EXPORT_FORMATS:
            match = spec.load().sniff(inner)
            if match is not None:
                return names[0], replace(match, module=spec.module)
    return None


# exceptions that mean keishiki's own code is wrong, whatever the file holds; every other
# exception escaping a reader is the file's bytes breaking the parser (CorruptFile)
_CODE_BUGS = (NameError, ImportError, SyntaxError, NotImplementedError)


def _module(name: str) -> FormatModule:
    """The format module ``keishiki.formats.<name>`` (:attr:`Match.module`)."""
    return cast(FormatModule, importlib.import_module(f"{__name__}.{name}"))


def identify(path: str | os.PathLike | Source) -> Match:
    """Which format ``path`` holds, judged by content (never by extension alone).

    Raises:
        UnknownFormat: no sniffer recognised it.
    """
    src = path if isinstance(path, Source) else Source(path)
    for spec in SNIFF_ORDER:
        module = spec.load()  # (outside the try: a module that fails to import is a bug)
        try:
            match = module.sniff(src)
        except KeishikiError:
            match = None
        except Exception:  # a sniffer must never take identification down
            if os.environ.get("KEISHIKI_DEBUG"):
                raise
            match = None
        if match is not None:
            return Match(match.format, match.variant, spec.module, match.reason)
    exported = export_folder_member(src)
    if exported is not None:
        member, match = exported
        reason = f"folder holding one {match.format} model file ({member})"
        return replace(match, reason=reason, member=member)
    _explain_near_miss(src)
    raise UnknownFormat(src.path, LOOKED_FOR)


def _explain_near_miss(src: Source) -> None:
    """Raise CorruptFile for what is recognisably a model container with broken bytes (an
    interrupted download's zip without its central directory, a model folder whose
    config.json does not parse) instead of the vaguer "not a model file"."""
    if not src.is_dir and src.looks_like_zip:
        src.zip()  # raises CorruptFile("broken zip archive: ...") when the directory is gone
    if src.is_dir and src.has("config.json"):
        config = src.read_json("config.json")  # raises CorruptFile on invalid JSON
        if not isinstance(config, dict):
            raise CorruptFile(src.child("config.json"), "config.json is not a JSON object")


def read(src: Source, match: Match) -> ModelInfo:
    """Run the matched format's reader, turning any parser failure into CorruptFile."""
    mod = _module(match.module)
    if match.member is not None:  # an export folder: read its one model file
        with Source(src.child(match.member)) as inner:
            info = read(inner, Match(match.format, match.variant, match.module, match.reason))
        info.details.setdefault("folder", {"model_file": match.member, "files": src.files()})
        info.file_size = src.size
        return info
    try:
        info = mod.read(src, match)
    except KeishikiError:
        raise
    except _CODE_BUGS:
        raise  # a bug in keishiki, not a broken file: the CLI reports it as an internal error
    except (MemoryError, RecursionError) as exc:
        raise CorruptFile(
            src.path, f"{type(exc).__name__} while parsing (absurd sizes or nesting?)"
        ) from None
    except Exception as exc:
        if os.environ.get("KEISHIKI_DEBUG"):
            raise
        raise CorruptFile(src.path, f"{type(exc).__name__}: {exc}") from None
    info.file_size = info.file_size or src.size  # (a split GGUF: every split's bytes)
    return info


__all__ = [
    "BY_ID",
    "FORMATS",
    "LOOKED_FOR",
    "ONNX_PREFERRED",
    "SNIFF_ORDER",
    "FormatModule",
    "FormatSpec",
    "Match",
    "export_folder_member",
    "identify",
    "read",
]
