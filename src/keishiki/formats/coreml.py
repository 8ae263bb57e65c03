"""coreml: Core ML ``.mlpackage`` folders (``Manifest.json`` + ``Data/com.apple.CoreML/``) and
bare ``.mlmodel`` protobuf files.

Summary only.  A bare ``.mlmodel`` has no magic and starts like an ONNX ModelProto (both
open with a small varint field 1 then a length-delimited field 2), so it is claimed only
with the ``.mlmodel`` extension *and* that protobuf shape; ONNX files are never taken.
"""

from __future__ import annotations

from typing import Any

from ..core.model import ModelInfo
from ..core.source import Source
from ..errors import CorruptFile, KeishikiError
from ._summary import first_varint_field, list_files, varint
from .registry import Match

FORMAT = "coreml"
MAX_SPEC_VERSION = 100  # Core ML specification versions are small integers (9 in 2024)


def _spec_version(head: bytes) -> int | None:
    """Model.specificationVersion when ``head`` opens like a Core ML Model protobuf.

    Model = {1: specificationVersion, 2: description {1: input {1: name ...}}}; ONNX's
    ModelProto also opens with field 1 then field 2, but its field 2 is a string
    (producer_name), whose text does not start with the nested 0x0a tags checked here.
    """
    version = first_varint_field(head)
    if version is None or not 1 <= version <= MAX_SPEC_VERSION:
        return None
    pos = varint(head, 1)[1]  # type: ignore[index]
    if head[pos : pos + 1] != b"\x12":  # field 2: description
        return None
    got = varint(head, pos + 1)
    if got is None or head[got[1] : got[1] + 1] != b"\x0a":  # description.input
        return None
    got = varint(head, got[1] + 1)
    if got is None or head[got[1] : got[1] + 1] != b"\x0a":  # input.name
        return None
    return version


MAX_TOP_FIELDS = 10_000  # a Model has a handful of top-level fields; more means garbage


def _check_top_level(data_at, size: int, name: str) -> None:
    """Walk the top-level protobuf fields of a Model (headers only) and refuse a file whose
    last field runs past its end: a truncated download is otherwise named "coreml" as if whole.

    ``data_at(offset, n)`` returns up to ``n`` bytes at ``offset``.

    Raises:
        CorruptFile: a field's length or varint runs past the end, or an unknown wire type.
    """
    pos = 0
    for _ in range(MAX_TOP_FIELDS):
        if pos == size:
            return
        window = data_at(pos, 20)
        got = varint(window, 0)
        if got is None:
            raise CorruptFile(name, "truncated protobuf field header", offset=pos)
        key, used = got
        wire = key & 7
        if wire == 0:
            got = varint(window, used)
            if got is None:
                raise CorruptFile(name, "truncated varint", offset=pos)
            pos += got[1]
        elif wire == 2:
            got = varint(window, used)
            if got is None:
                raise CorruptFile(name, "truncated length", offset=pos)
            end = pos + got[1] + got[0]
            if end > size:
                raise CorruptFile(
                    name,
                    f"field {key >> 3} needs {end - size} bytes more than the "
                    f"{size}-byte file holds (truncated?)",
                    offset=pos,
                )
            pos = end
        elif wire in (1, 5):
            pos += used + (8 if wire == 1 else 4)
        else:
            raise CorruptFile(name, f"unknown protobuf wire type {wire}", offset=pos)
        if pos > size:
            raise CorruptFile(
                name, "last field runs past the end of the file (truncated?)", offset=size
            )
    raise CorruptFile(name, f"more than {MAX_TOP_FIELDS} top-level fields: not a Core ML model")


def _manifest(src: Source) -> dict[str, Any] | None:
    try:
        data = src.read_json("Manifest.json")
    except KeishikiError:
        return None
    ok = isinstance(data, dict) and isinstance(data.get("itemInfoEntries"), dict)
    return data if ok else None


def sniff(src: Source) -> Match | None:
    if src.is_dir:
        if src.has("Manifest.json") and _manifest(src) is not None:
            return Match(FORMAT, "mlpackage", reason="folder with a Core ML Manifest.json")
        return None
    if src.path.suffix.lower() == ".mlmodel" and _spec_version(src.head[:64]) is not None:
        return Match(FORMAT, "mlmodel", reason=".mlmodel protobuf (specificationVersion)")
    return None


def _root_model(src: Source, manifest: dict[str, Any]) -> str | None:
    entries = manifest.get("itemInfoEntries") or {}
    root = entries.get(manifest.get("rootModelIdentifier"), {})
    rel = root.get("path") if isinstance(root, dict) else None
    return f"Data/{rel}" if isinstance(rel, str) else None


def read(src: Source, match) -> ModelInfo:
    details: dict[str, Any] = {}
    warnings = ["summary only: reading a Core ML model's layers and weights needs coremltools"]
    if src.is_dir:
        manifest = _manifest(src) or {}
        files = list_files(src.path)
        model_rel = _root_model(src, manifest)
        details.update(
            manifest=manifest.get("fileFormatVersion"),
            files=files,
            n_files=len(files),
            root_model=model_rel,
        )
        spec = None
        if model_rel and src.has(model_rel):
            model_path = src.child(model_rel)
            with open(model_path, "rb") as fh:
                spec = _spec_version(fh.read(64))

                def data_at(offset: int, n: int) -> bytes:
                    fh.seek(offset)
                    return fh.read(n)

                _check_top_level(data_at, model_path.stat().st_size, model_path)
        elif model_rel:
            warnings.append(f"the manifest's root model {model_rel} is missing")
        weights = [f for f in files if "/weights/" in f["path"]]
        details["weights_bytes"] = sum(f["size"] for f in weights)
    else:
        spec = _spec_version(src.head[:64])
        _check_top_level(lambda off, n: src.read_at(off, n, exact=False), src.size, src.path)
        details["files"] = [{"path": src.name, "size": src.size}]
    details["specification_version"] = spec
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        variant=match.variant,
        format_version=str(spec) if spec is not None else None,
        details={FORMAT: details},
        warnings=warnings,
    )
