"""tensorflow-savedmodel: a folder with ``saved_model.pb`` (or ``.pbtxt``) and ``variables/``.

Summary only: keishiki names the format and lists the files; reading the graph and the
variables needs TensorFlow, which keishiki does not depend on.
"""

from __future__ import annotations

from ..core.model import ModelInfo
from ..core.source import Source
from ._summary import first_varint_field, list_files
from .registry import Match

FORMAT = "tensorflow-savedmodel"


def sniff(src: Source) -> Match | None:
    if src.is_dir and (src.has("saved_model.pb") or src.has("saved_model.pbtxt")):
        return Match(FORMAT, None, reason="folder with saved_model.pb")
    # the graph file itself: its name plus SavedModel's leading schema version (field 1 = 1);
    # claimed here, before the ONNX sniffer, because ONNX's ModelProto opens the same way
    if not src.is_dir and src.name == "saved_model.pb" and first_varint_field(src.head) == 1:
        return Match(FORMAT, None, reason="saved_model.pb (SavedModel schema version 1)")
    return None


def read(src: Source, match) -> ModelInfo:
    if not src.is_dir:  # pointed at saved_model.pb: describe the folder around it
        src = Source(src.path.parent)
    files = list_files(src.path)
    names = {f["path"] for f in files}
    details = {
        "files": files,
        "n_files": len(files),
        "graph_file": "saved_model.pb" if "saved_model.pb" in names else "saved_model.pbtxt",
        "variables_shards": sorted(n for n in names if n.startswith("variables/variables.data")),
        "has_variables_index": "variables/variables.index" in names,
        "has_fingerprint": "fingerprint.pb" in names,
        "assets": sorted(n for n in names if n.startswith("assets/")),
    }
    version = None
    if "saved_model.pb" in names:
        with open(src.child("saved_model.pb"), "rb") as fh:
            version = first_varint_field(fh.read(16))  # SavedModel.saved_model_schema_version
    details["saved_model_schema_version"] = version
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        variant=None,
        format_version=str(version) if version is not None else None,
        details={FORMAT: details},
        warnings=[
            "summary only: reading a SavedModel's graph and variables "
            "needs TensorFlow (keishiki lists its files)"
        ],
    )
