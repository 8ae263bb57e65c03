"""Whether Netron draws a model as a graph, and which file to hand it.

Netron opens nearly every format keishiki reads, but for weight containers it draws no
graph: a safetensors file, a ``torch.save`` state dict or pickled module, a NumPy array
or a Flax checkpoint opens as a flat list of tensors (netron's ``safetensors.js``,
``numpy.js``, ``flax.js``, and ``pytorch.js``'s ``weights`` graph), which the view's
own tensor table already shows better.  The link is offered only where Netron has
operators or layers to draw (read from netron 9.3's sources):

- ONNX, TorchScript, ``torch.export`` programs, TFLite, Core ML, TensorFlow SavedModel,
  Keras v3 archives and Lua Torch7 modules: a graph of operators or layers;
- a Keras HDF5 file only when it holds a ``model_config`` (a weights-only ``.h5`` is a
  list of datasets);
- a GGUF file only when its ``general.architecture`` is one Netron has a block definition
  for (``gguf-metadata.json`` in the installed netron package); other architectures come
  out as unconnected ``weights`` nodes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..core.model import ModelInfo
from ..formats.registry import EXPORT_SUFFIXES, NETRON_GRAPH

# the file Netron must be given for a model that is a folder
_FOLDER_ENTRY = {
    "tensorflow-savedmodel": ("saved_model.pb",),
    "coreml": ("Data/com.apple.CoreML/model.mlmodel",),
}


def available() -> bool:
    """Whether the ``netron`` package is installed."""
    from .._optional import available as has

    return has("netron")


@lru_cache(maxsize=1)
def gguf_architectures() -> frozenset[str]:
    """Architectures the installed Netron draws GGUF graphs for (empty without netron)."""
    import importlib.util

    spec = importlib.util.find_spec("netron")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    table = Path(next(iter(spec.submodule_search_locations))) / "gguf-metadata.json"
    try:
        entries = json.loads(table.read_text("utf-8"))
    except (OSError, ValueError):
        return frozenset()
    return frozenset(e["name"] for e in entries if isinstance(e, dict) and "name" in e)


def draws_graph(info: ModelInfo) -> bool:
    """Whether Netron shows ``info`` as a graph (not only a list of weights)."""
    if info.format in NETRON_GRAPH:  # (the registry's netron="graph"; "depends" below)
        return True
    if info.format == "keras-h5":
        return bool((info.details.get("keras-h5") or {}).get("model_class"))
    if info.format == "gguf":  # (a vocabulary-only GGUF has nothing to draw)
        return bool(info.tensors) and (info.gguf or {}).get("architecture") in gguf_architectures()
    return False


# Netron 9 writes the path it is given into its page unescaped (a <meta> tag: the whole
# path, folders included) and serves every file of the model's folder under /data/: a
# path that closes the tag could load a script from that folder.  Such a model is not
# offered to Netron.
_UNSAFE_IN_NETRON = frozenset("\"<>&`'")


def target(info: ModelInfo) -> str | None:
    """The file to open in Netron for ``info``, or None when Netron has no graph for it
    (or the model is not a local file, such as an ``hf://`` repository, or its path holds
    characters Netron's page would not escape)."""
    chosen = _file_to_draw(info)
    return chosen if chosen and not _UNSAFE_IN_NETRON & set(chosen) else None


def _file_to_draw(info: ModelInfo) -> str | None:
    if not draws_graph(info):
        return None
    path = Path(info.path)
    if path.is_file():
        return str(path)
    if not path.is_dir():
        return None
    for entry in _FOLDER_ENTRY.get(info.format, ()):
        if (path / entry).is_file():
            return str(path / entry)
    # an export folder (model.onnx or model.pt beside its tokenizer and config)
    found = [p for p in sorted(path.iterdir()) if p.suffix in EXPORT_SUFFIXES and p.is_file()]
    onnx = [p for p in found if p.suffix == ".onnx"]
    pick = onnx or found
    return str(pick[0]) if len(pick) == 1 or (onnx and pick[0].name == "model.onnx") else None


def link_offered(info: ModelInfo) -> bool:
    """Whether the page offers "Open in Netron": netron installed and a graph to draw."""
    return available() and target(info) is not None
