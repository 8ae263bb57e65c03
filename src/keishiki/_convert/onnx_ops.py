"""Operations on existing ONNX files: opset change, embedded ↔ external data, → safetensors.

External-data locations are resolved only inside the model's folder: a ``location`` that is
absolute or climbs out with ``..`` is refused before anything is read (an ONNX file is data,
and a crafted one could otherwise make keishiki read ``/etc/shadow`` into a safetensors file).
"""

from __future__ import annotations

from pathlib import Path

from .._optional import require
from ..errors import CorruptFile, InvalidRequest

TWO_GB = 2 * 1024**3
DEFAULT_EXTERNAL_THRESHOLD = 1024  # bytes: tensors smaller than this stay in the graph file


def convert_opset_proto(onnx_model, target: int):
    """Return ``onnx_model`` converted to opset ``target`` with ``onnx.version_converter``.

    Raises:
        InvalidRequest: the converter has no adapter for an op on the way (a one-line message
            naming the op and the versions, e.g. 18 → 14 stops at ``Shape`` version 15).
    """
    onnx = require("onnx", purpose="change the opset")
    from onnx import version_converter

    current = _default_opset(onnx_model)
    if current == target:
        return onnx_model
    try:
        converted = version_converter.convert_version(onnx_model, target)
    except Exception as exc:  # the C++ converter raises RuntimeError/IndexError/...
        reason = converter_reason(exc)
        raise InvalidRequest(
            f"onnx.version_converter cannot convert opset {current} → {target}: {reason} "
            f"(re-export from the source model with opset={target}, or choose another "
            f"`opset`)"
        ) from None
    if uses_external_data(converted):
        return converted  # tensors not loaded: the saved file is checked instead
    try:
        onnx.checker.check_model(converted)
    except ValueError:  # > 2 GB protos cannot be checked in memory; the file check runs later
        pass
    except onnx.checker.ValidationError as exc:
        raise InvalidRequest(
            f"opset {current} → {target} produced an invalid model: {str(exc).splitlines()[0]}"
        ) from None
    return converted


def converter_reason(exc: BaseException) -> str:
    """The readable part of a version_converter error (drops the C++ source path and assert)."""
    import re

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\S+\.(h|cc|cpp):\d+:\s*(\w+:\s*)?", "", text)
    text = re.sub(r"^Assertion `[^`]*` failed:\s*", "", text)
    return text.replace("$", "")


def _default_opset(onnx_model) -> int:
    for entry in onnx_model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def check_external_locations(model_path: Path, onnx_model) -> list[str]:
    """Every external-data location of ``onnx_model``, refused if it leaves the model's folder.

    Raises:
        CorruptFile: an absolute location, one escaping with ``..``, or a missing file.
    """
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    folder = model_path.resolve().parent
    locations = []
    for tensor in _get_all_tensors(onnx_model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        if "\0" in location:
            raise CorruptFile(
                model_path,
                f"tensor {tensor.name!r} names external data "
                f"{location!r}, which holds a NUL byte (refused)",
            )
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise CorruptFile(
                model_path,
                f"tensor {tensor.name!r} points at external data "
                f"{location!r} outside the model's folder (refused)",
            )
        if not target.is_file():
            raise CorruptFile(
                model_path, f"external data file {location!r} of tensor {tensor.name!r} is missing"
            )
        locations.append(location)
    return sorted(set(locations))


def load_model(path: Path, load_external: bool = True):
    """``onnx.load`` after checking external-data locations stay inside the model's folder."""
    onnx = require("onnx", purpose="read the ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise CorruptFile(path, f"not a readable ONNX protobuf: {str(exc)[:200]}") from None
    check_external_locations(Path(path), model)
    if load_external:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(Path(path).resolve().parent))
    return model


def model_file(src: Path) -> Path:
    """The ``.onnx`` file of ``src``: itself, or the only ``.onnx`` file inside a folder.

    Raises:
        InvalidRequest: a folder with no or several ``.onnx`` files.
    """
    src = Path(src)
    if not src.is_dir():
        return src
    found = sorted(p for p in src.iterdir() if p.suffix.lower() == ".onnx" and p.is_file())
    if len(found) != 1:
        raise InvalidRequest(f"{src}: expected one .onnx file in the folder, found {len(found)}")
    return found[0]


def uses_external_data(onnx_model) -> bool:
    """True when any tensor of the (not yet loaded) model lives in an external file."""
    from onnx.external_data_helper import _get_all_tensors
    from onnx.external_data_helper import uses_external_data as uses

    return any(uses(t) for t in _get_all_tensors(onnx_model))


def tensor_bytes(onnx_model) -> int:
    """Bytes of tensor data held by the (loaded) model's initializers and Constant nodes."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(len(t.raw_data) for t in _get_all_tensors(onnx_model))


def rewrite(
    src_model: Path,
    out_model: Path,
    *,
    opset: int | None = None,
    external_data: bool | None = None,
    threshold: int = DEFAULT_EXTERNAL_THRESHOLD,
) -> dict:
    """Write ``src_model`` to ``out_model`` at another opset and/or data layout.

    Args:
        src_model: the source ``.onnx`` file (its external data beside it).
        out_model: the ``.onnx`` file to write; external data goes to ``<name>.data`` beside it.
        opset: the target default-domain opset (None keeps it).
        external_data: True/False forces the layout; None keeps the source's (and switches to
            external above 2 GB, where protobuf cannot hold the model).
        threshold: tensors smaller than this many bytes stay inside the graph file.

    Returns:
        Facts: ``opset_from``, ``opset``, ``external_data_from``, ``external_data``,
        ``files`` written.

    Raises:
        InvalidRequest: no version_converter adapter for the requested opset; a model above
            2 GB asked to be embedded.
        CorruptFile: external data outside the folder or missing.
    """
    onnx = require("onnx", purpose="rewrite the ONNX model")
    from onnx.external_data_helper import load_external_data_for_model

    model = load_model(src_model, load_external=False)
    was_external = uses_external_data(model)
    opset_from = _default_opset(model)
    if opset is not None and opset != opset_from:
        model = convert_opset_proto(model, opset)
    load_external_data_for_model(model, str(Path(src_model).resolve().parent))
    size = tensor_bytes(model)
    if external_data is None:
        external_data = was_external or size > TWO_GB
    elif not external_data and size > TWO_GB:
        raise InvalidRequest(
            f"{src_model}: {size / 1e9:.1f} GB of tensors cannot be embedded "
            f"(protobuf's 2 GB limit); drop external_data=False"
        )
    out_model = Path(out_model)
    if external_data:
        onnx.save_model(
            model,
            str(out_model),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=out_model.name + ".data",
            size_threshold=threshold,
        )
    else:
        onnx.save_model(model, str(out_model))
    checker = _check_like_source(out_model, src_model)
    files = [out_model.name] + (
        [out_model.name + ".data"]
        if (out_model.parent / (out_model.name + ".data")).exists()
        else []
    )
    return {
        "opset_from": opset_from,
        "opset": _default_opset(model),
        "external_data_from": was_external,
        "external_data": external_data,
        "files": files,
        "tensor_bytes": size,
        "checker": checker,
    }


def _check_like_source(out_model: Path, src_model: Path) -> str:
    """``onnx.checker`` on the result: "ok", or the reason when the source fails it too.

    Raises:
        InvalidRequest: the result fails the checker while the source passes it.
    """
    onnx = require("onnx")
    try:
        onnx.checker.check_model(str(out_model))
        return "ok"
    except onnx.checker.ValidationError as exc:
        reason = str(exc).strip().splitlines()[0][:200]
    try:
        onnx.checker.check_model(str(src_model))
    except onnx.checker.ValidationError:
        return f"fails onnx.checker, as the source does: {reason}"
    raise InvalidRequest(f"the rewritten model fails onnx.checker: {reason}")
