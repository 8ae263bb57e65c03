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
            f"(re-export from the source model at opset {target}, or pick an opset ≥ the "
            f"op's version)") from None
    try:
        onnx.checker.check_model(converted)
    except ValueError:  # > 2 GB protos cannot be checked in memory; the file check runs later
        pass
    except onnx.checker.ValidationError as exc:
        raise InvalidRequest(f"opset {current} → {target} produced an invalid model: "
                             f"{str(exc).splitlines()[0]}") from None
    return converted


def converter_reason(exc: BaseException) -> str:
    """The readable part of a version_converter error (drops the C++ source path and assert)."""
    import re

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\S+\.(h|cc|cpp):\d+:\s*(\w+:\s*)?", "", text)
    text = re.sub(r"^Assertion `[^`]*` failed:\s*", "", text)
    return text


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
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise CorruptFile(model_path, f"tensor {tensor.name!r} points at external data "
                              f"{location!r} outside the model's folder (refused)")
        if not target.is_file():
            raise CorruptFile(model_path, f"external data file {location!r} of tensor "
                              f"{tensor.name!r} is missing")
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
