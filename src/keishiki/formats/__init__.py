"""The format registry: sniff a path by content, then read it lazily into a ModelInfo.

Each module in :data:`SNIFF_ORDER` exposes ``sniff(src) -> Match | None`` (cheap, never
raises, never imports a heavy library) and ``read(src, match) -> ModelInfo``.  Order
matters only where containers overlap: folders first, then the zip flavours from the most
specific (TorchScript, torch.export, Keras, NumPy) to the most general (torch.save), then
files with a magic number, then the formats with no magic at all (Torch7, ONNX), which
their sniffers confirm by parsing a little.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

from ..core.model import ModelInfo
from ..core.source import Source
from ..errors import CorruptFile, KeishikiError, UnknownFormat


@dataclass(frozen=True)
class Match:
    """A sniffer's verdict: the format id (as in ``--json``), its variant, and why.

    ``member`` names the one file inside a folder that holds the model (an export folder:
    ``model.pt`` beside its tokenizer and config), which the format's reader then reads.
    """

    format: str
    variant: str | None = None
    module: str = ""
    reason: str = ""
    member: str | None = None


# formats whose folder form is "model file(s) + tokenizer/config" (keishiki's and optimum's
# exports); an optimum decoder folder holds several graphs: the one with the cache is run
_EXPORT_MODULES = ("torchscript", "torch_export", "onnx")
_EXPORT_SUFFIXES = (".pt", ".pt2", ".pth", ".jit", ".onnx")
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
    names = [n for n in src.files() if n.lower().endswith(_EXPORT_SUFFIXES) and src.has(n)]
    preferred = [n for n in ONNX_PREFERRED if n in names]
    if preferred:
        names = preferred[:1]
    if len(names) != 1:
        return None
    with Source(src.child(names[0])) as inner:
        for name in _EXPORT_MODULES:
            mod = _module(name)
            match = mod.sniff(inner) if mod is not None else None
            if match is not None:
                return names[0], match
    return None


SNIFF_ORDER = [
    "hf_model",  # folder: config.json + weights
    "tf_savedmodel",  # folder: saved_model.pb
    "coreml",  # .mlpackage folder / .mlmodel
    "torchscript",  # zip with code/ and constants.pkl
    "torch_export",  # zip with serialized_exported_program
    "keras",  # zip with config.json + model.weights.h5
    "numpy",  # \x93NUMPY, or a zip of .npy members
    "pytorch",  # zip with data.pkl, or a legacy pickle with torch's magic number
    "safetensors",  # u64 header length + JSON header
    "gguf",  # "GGUF"
    "keras_h5",  # HDF5 signature
    "tflite",  # "TFL3" flatbuffer identifier
    "flax_msgpack",  # msgpack map of ndarray ext types
    "pickle",  # any other pickle stream (not a model format, but scan-worthy)
    "torch7",  # Lua Torch serialisation (binary or ascii): confirmed by parsing
    "onnx",  # protobuf, no magic: confirmed by parsing, also a folder with one .onnx
]

LOOKED_FOR = (
    "torch7, pytorch, torchscript, torch-export, safetensors, hf-model, onnx, gguf, "
    "numpy, keras-h5, keras, flax-msgpack, pickle, tflite, tensorflow-savedmodel, coreml"
)

# exceptions that mean keishiki's own code is wrong, whatever the file holds; every other
# exception escaping a reader is the file's bytes breaking the parser (CorruptFile)
_CODE_BUGS = (NameError, ImportError, SyntaxError, NotImplementedError)


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            return None  # format module not written yet
        raise


def identify(path: str | os.PathLike | Source) -> Match:
    """Which format ``path`` holds, judged by content (never by extension alone).

    Raises:
        UnknownFormat: no sniffer recognised it.
    """
    src = path if isinstance(path, Source) else Source(path)
    for name in SNIFF_ORDER:
        mod = _module(name)
        if mod is None:
            continue
        try:
            match = mod.sniff(src)
        except KeishikiError:
            match = None
        except Exception:  # a sniffer must never take identification down
            if os.environ.get("KEISHIKI_DEBUG"):
                raise
            match = None
        if match is not None:
            return Match(match.format, match.variant, name, match.reason)
    exported = export_folder_member(src)
    if exported is not None:
        member, match = exported
        module = _EXPORT_MODULES[[m.replace("_", "-") for m in _EXPORT_MODULES].index(match.format)]
        return Match(
            match.format,
            match.variant,
            module,
            f"folder holding one {match.format} model file ({member})",
            member,
        )
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
    assert mod is not None
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
    from ..core.gate import check_tree
    from ..hub import is_hf_path

    if is_hf_path(path):
        from ..hub.remote import inspect_remote

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
        info.safety = _safety(src, info)
        return info


def _add_verdict(exc: CorruptFile | UnknownFormat, src: Source, match: Match | None) -> None:
    """A file a reader rejects (or no sniffer recognises) may still be a working exploit for
    a laxer loader (torch ignores a bad CRC, a truncated pickle runs up to the break, a zip
    with a pickle inside is still unzipped): name what scan finds."""
    from .._scan import CODE_BEARING

    if (match is not None and match.format not in CODE_BEARING) or src.is_dir:
        return
    from .._scan import scan

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


def _safety(src: Source, info: ModelInfo) -> dict | None:
    """The scan verdict for formats that can carry code (pickles, TorchScript, Keras, ONNX
    external data); None for pure-data formats.  Owned by :mod:`keishiki._scan`."""
    from .._scan import summary_for

    return summary_for(src, info)
