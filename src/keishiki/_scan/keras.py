"""Keras models that carry Python: every node of the model config that can import or run code.

Keras builds the model from its config (``config.json`` in a ``.keras`` zip, the root
attribute ``model_config`` of an HDF5 file) before it reads a single weight, so the config
alone decides.  Classes of node judged, wherever they sit (nested, shared and functional
sub-models, wrappers, layer arguments, the top level):

* serialized Python: a ``Lambda`` layer (Keras 3 ``__lambda__`` base64 bytecode, Keras 2
  ``function_type: "lambda"``), any marshalled ``function`` config: dangerous under
  ``safe_mode=False``, and ``safe_mode`` has had bypass after bypass (CVE-2024-3660,
  CVE-2025-9905: ignored for HDF5);
* imports by name: ``module`` outside Keras's own packages is imported and its attribute
  used (CVE-2025-1550: ``os.system`` as an activation, ``subprocess.Popen`` at the top);
  custom ``registered_name`` objects need code the file does not carry;
* Keras's own gadgets that pass its module check: ``keras.config.enable_unsafe_
  deserialization`` (CVE-2025-9906, turns safe mode off mid-load), ``keras.utils.get_file``
  (CVE-2025-8747, downloads and writes files), ``load_model``, ``TFSMLayer`` (loads another
  graph), ``StringLookup``-style ``vocabulary`` paths (read local files at load);
* ``TFOpLambda``/``SlicingOpLambda`` naming a TF symbol that touches files or runs Python.

Everything else in Keras's own namespaces (layers, initializers, regularizers, optimizers,
activations...) is safe.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

from .allowlist import classify

MAX_NODES = 2_000_000
KERAS_PACKAGES = frozenset({"keras", "tf_keras", "keras_hub", "keras_cv", "keras_nlp"})
_TF_KERAS = ("tensorflow.keras", "tensorflow.python.keras")
# Keras names that reach files, the network, other models or safe mode itself
_KERAS_GADGETS = {
    "enable_unsafe_deserialization": "turns safe_mode off for the rest of the load (CVE-2025-9906)",
    "get_file": "downloads and writes files when the config is deserialized (CVE-2025-8747)",
    "load_model": "loads another model file (and whatever code it carries)",
    "load_weights": "reads another file",
    "TFSMLayer": "loads a TensorFlow SavedModel graph from a path",
    "func_load": "unmarshals Python bytecode",
    "image_dataset_from_directory": "reads local files",
    "text_dataset_from_directory": "reads local files",
    "audio_dataset_from_directory": "reads local files",
    "load_img": "reads a local file",
}
_GADGET_MODULES = (
    "keras.src.utils.file_utils",
    "keras.src.saving",
    "keras.saving",
    "keras.src.legacy.saving",  # Keras 2's HDF5 loading, kept in Keras 3: other files
    "keras.legacy.saving",
    "keras.src.utils.python_utils",
    "keras.utils.file_utils",
)
_VOCAB_LAYERS = frozenset({"StringLookup", "IntegerLookup", "TextVectorization"})
# TF symbols a TFOpLambda may name that touch files, run Python or print
_TF_DANGEROUS = (
    "io.",
    "gfile.",
    "py_function",
    "numpy_function",
    "compat.v1.py_func",
    "raw_ops.",
    "saved_model.",
    "summary.",
    "print",
    "debugging.",
    "data.",
    "keras.",
    "load_op_library",
    "load_library",
    "compat.v1.gfile",
    "compat.v1.io",
)


def _nodes(value: Any) -> Iterator[dict]:
    """Every dict in the config (iterative: configs nest deeper than Python recursion)."""
    todo, n = [value], 0
    while todo:
        obj = todo.pop()
        n += 1
        if n > MAX_NODES:
            raise ValueError(f"Keras config with more than {MAX_NODES:,} nodes")
        if isinstance(obj, dict):
            yield obj
            todo.extend(obj.values())
        elif isinstance(obj, list):
            todo.extend(obj)


def _last(name: Any) -> str:
    """``keras.layers>Lambda`` / ``keras.layers.Lambda`` / ``Lambda`` -> ``Lambda``."""
    return name.replace(">", ".").rsplit(".", 1)[-1] if isinstance(name, str) else ""


def config_findings(config: Any) -> list[tuple[str, str, str]]:
    """(severity, subject, reason) for each node of a Keras config that imports or runs code
    (a config too large to judge to the end is itself ``unknown``)."""
    out: list[tuple[str, str, str]] = []
    try:
        for d in _nodes(config):
            out.extend(_judge(d))
    except ValueError as exc:  # not judged to the end: never a clean bill of health
        out.append(("unknown", "keras-config", f"{exc}: not judged to the end"))
    return out


def _judge(d: dict) -> list[tuple[str, str, str]]:
    cls, module, registered = d.get("class_name"), d.get("module"), d.get("registered_name")
    inner = d.get("config")
    names = {_last(cls), _last(registered)}
    if cls == "function" and isinstance(inner, str):
        names.add(_last(inner))  # Keras 3 functions: {"class_name": "function", "config": NAME}
    found = _code(d, cls, inner, names)
    if isinstance(module, str) and module:
        found += _module(module, cls, inner)
    elif (
        isinstance(registered, str)
        and ">" in registered
        and registered.split(">", 1)[0].split(".")[0] not in KERAS_PACKAGES
    ):
        found.append(
            (
                "unknown",
                registered,
                f"custom registered object {registered}: loading needs its package's code",
            )
        )
    for name in names & set(_KERAS_GADGETS):
        found.append(("dangerous", name, f"Keras config names {name}: {_KERAS_GADGETS[name]}"))
    if (
        _last(cls) in _VOCAB_LAYERS
        and isinstance(inner, dict)
        and isinstance(inner.get("vocabulary"), str)
    ):
        found.append(
            (
                "dangerous",
                f"{_last(cls)}.vocabulary",
                f"vocabulary is the path {inner['vocabulary'][:80]!r}: Keras reads that "
                "file when it builds the layer",
            )
        )
    return found


def _code(d: dict, cls: Any, inner: Any, names: set[str]) -> list[tuple[str, str, str]]:
    """Serialized Python and TF-op lambdas."""
    layer = inner.get("name") if isinstance(inner, dict) else None
    if "Lambda" in names:
        return [
            (
                "dangerous",
                f"Lambda:{layer or '?'}",
                "Lambda layer: its function is serialized Python that runs when the model "
                "is loaded (safe_mode=False, or any safe_mode bypass)",
            )
        ]
    if (
        cls in ("__lambda__", "function")
        and isinstance(inner, dict)
        and ("code" in inner or "function" in inner)
    ):
        return [("dangerous", str(cls), "serialized Python function (marshalled bytecode)")]
    if "lambda" in (d.get("function_type"), d.get("output_shape_type")):
        return [
            (
                "dangerous",
                f"{cls or 'layer'}:{d.get('name', '?')}",
                "Keras 2 function_type 'lambda': marshalled bytecode runs at load",
            )
        ]
    if names & {"TFOpLambda", "SlicingOpLambda"} and isinstance(inner, dict):
        fn = inner.get("function")
        if not isinstance(fn, str):
            return [("unknown", str(cls), f"{cls} without a named TF function")]
        if fn.startswith(_TF_DANGEROUS) or ".io." in fn or "gfile" in fn:
            return [
                (
                    "dangerous",
                    f"tf.{fn}",
                    f"{cls} calls tf.{fn}: touches files or runs Python when the layer is called",
                )
            ]
    return []


def _module(module: str, cls: Any, inner: Any) -> list[tuple[str, str, str]]:
    """A node Keras resolves by importing ``module`` and taking an attribute of it."""
    name = inner if cls == "function" and isinstance(inner, str) else cls
    name = name if isinstance(name, str) else "?"
    root = module.split(".", 1)[0]
    if module.startswith(_GADGET_MODULES):
        return [("dangerous", f"{module}.{name}", f"{module} reaches files or code")]
    if root in KERAS_PACKAGES or module.startswith(_TF_KERAS):
        return []
    severity, reason = classify(module, name)
    if severity == "dangerous":
        return [
            (
                "dangerous",
                f"{module}.{name}",
                f"Keras imports {module} and uses {name} (CVE-2025-1550): {reason}",
            )
        ]
    if module in ("builtins", "numpy"):
        return []  # Keras 3's spelling of built-in functions and numpy dtypes
    return [
        (
            "unknown",
            f"{module}.{name}",
            f"custom object {name} from {module}: Keras imports that module to load it",
        )
    ]


def parse_config(raw: bytes | str) -> Any:
    """The JSON config, or None when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None


def h5_config(path: str) -> tuple[Any, str | None]:
    """The ``model_config`` JSON of a Keras HDF5 file, with its ``training_config`` (the
    loss, metrics and optimizer ``load_model(compile=True)`` deserializes, custom objects
    included) beside it: (config or None, error or None).

    Uses h5py when installed; otherwise returns (None, None) and the caller falls back to a
    byte search.
    """
    try:
        import h5py  # noqa: PLC0415 - heavy, only for HDF5 files
    except ImportError:
        return None, None
    try:
        with h5py.File(path, "r") as fh:
            raws = [fh.attrs.get(key) for key in ("model_config", "training_config")]
    except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError on damaged files
        return None, f"HDF5 file unreadable: {type(exc).__name__}: {exc}"
    parsed = []
    for raw in raws:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        parsed.append(None if raw is None else parse_config(str(raw)))
    model, training = parsed
    if raws[0] is None and raws[1] is None:
        return None, None
    if (raws[0] is not None and model is None) or (raws[1] is not None and training is None):
        return None, "Keras model_config/training_config is not valid JSON"
    return ([model, training] if training is not None else model), None


MAX_H5_OBJECTS = 200_000  # links and datasets walked for references before giving up


def h5_references(path: str) -> tuple[list[tuple[str, str]], str | None]:
    """(object name, file it reads) for every HDF5 external link, external storage and
    virtual-dataset source in ``path``, and an error or None.

    h5py follows all three when Keras reads a weight (``load_model``, ``load_weights``):
    like ONNX external data, they make a loader read another file.  Soft links stay inside
    the file.  Without h5py: ([], None) (nothing can be read that way here either).
    """
    try:
        import h5py  # noqa: PLC0415 - heavy, only for HDF5 files
    except ImportError:
        return [], None
    found: list[tuple[str, str]] = []
    seen = [0]

    def visit(group: Any, prefix: str) -> None:
        for key in group:
            seen[0] += 1
            if seen[0] > MAX_H5_OBJECTS:
                raise RecursionError(f"more than {MAX_H5_OBJECTS} HDF5 objects")
            name = f"{prefix}{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                found.append((name, link.filename))
                continue
            if not isinstance(link, h5py.HardLink):
                continue  # a soft link names a path inside this file
            obj = group[key]
            if isinstance(obj, h5py.Group):
                visit(obj, f"{name}/")
            elif isinstance(obj, h5py.Dataset):
                found.extend(
                    (name, ext[0] if isinstance(ext[0], str) else ext[0].decode("utf-8", "replace"))
                    for ext in obj.external or []
                )
                if obj.is_virtual:
                    found.extend(
                        (name, src.file_name)
                        for src in obj.virtual_sources()
                        if src.file_name != "."
                    )

    try:
        with h5py.File(path, "r") as fh:
            visit(fh, "")
    except RecursionError as exc:
        return found, f"HDF5 file not walked in full: {exc}"
    except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError on damaged files
        return found, f"HDF5 file unreadable: {type(exc).__name__}: {exc}"
    return found, None


# serialized Python in the attribute text, whatever the JSON spacing or escaping of quotes
_RAW_CODE = re.compile(
    rb'class_name\\?"\s*:\s*\\?"(?:Lambda|__lambda__)\\?"'
    rb'|function_type\\?"\s*:\s*\\?"lambda'
)


def raw_lambda_hint(head_and_tail: bytes) -> bool:
    """A byte search for a serialized Lambda layer or function (used when h5py is missing:
    HDF5 stores attribute text uncompressed)."""
    return bool(_RAW_CODE.search(head_and_tail))
