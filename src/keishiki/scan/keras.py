"""Keras models that carry Python: Lambda layers and custom objects in the model config.

A Keras ``Lambda`` layer stores its function as marshalled bytecode (Keras 2: ``config.
function`` of a ``Lambda``; Keras 3: a ``__lambda__`` object with base64 ``code``); loading
it with ``safe_mode=False`` runs that bytecode.  Custom layers registered by a package need
that package's code.  The config is JSON: in a ``.keras`` zip it is ``config.json``, in an
HDF5 file the root attribute ``model_config``.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

_KERAS_MODULES = ("keras", "tf_keras", "tensorflow.keras", "builtins", "numpy")


def _dicts(value: Any, limit: int = 1_000_000) -> Iterator[dict]:
    todo, n = [value], 0
    while todo and n < limit:
        obj = todo.pop()
        n += 1
        if isinstance(obj, dict):
            yield obj
            todo.extend(obj.values())
        elif isinstance(obj, list):
            todo.extend(obj)


def config_findings(config: Any) -> list[tuple[str, str, str]]:
    """(severity, subject, reason) for each Lambda layer or custom object in a Keras config."""
    out: list[tuple[str, str, str]] = []
    for d in _dicts(config):
        cls = d.get("class_name")
        if not isinstance(cls, str):
            continue
        layer = (d.get("config") or {}).get("name") if isinstance(d.get("config"), dict) else None
        if cls == "Lambda":
            out.append(("dangerous", f"Lambda:{layer or '?'}",
                        "Lambda layer: its function is serialized Python bytecode that runs "
                        "when the model is loaded with safe_mode=False"))
        elif cls in ("__lambda__", "function") and isinstance(d.get("config"), dict) \
                and ("code" in d["config"] or "function" in d["config"]):
            out.append(("dangerous", cls, "serialized Python function (marshalled bytecode)"))
        elif cls == "TFOpLambda":
            continue  # a named TF op, no bytecode
        else:
            module = d.get("module")
            registered = d.get("registered_name")
            if isinstance(module, str) and not module.startswith(_KERAS_MODULES):
                out.append(("unknown", f"{module}.{cls}",
                            f"custom object {cls} from {module}: loading needs that code"))
            elif isinstance(registered, str) and ">" in registered:
                out.append(("unknown", registered,
                            f"custom registered object {registered}: loading needs its code"))
    return out


def parse_config(raw: bytes | str) -> Any:
    """The JSON config, or None when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None


def h5_config(path: str) -> tuple[Any, str | None]:
    """The ``model_config`` JSON of a Keras HDF5 file: (config or None, error or None).

    Uses h5py when installed; otherwise looks for the attribute's JSON text in the raw
    bytes (attributes are stored uncompressed).
    """
    try:
        import h5py  # noqa: PLC0415 - heavy, only for HDF5 files
    except ImportError:
        return None, None
    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
    except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError on damaged files
        return None, f"HDF5 file unreadable: {type(exc).__name__}: {exc}"
    if raw is None:
        return None, None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return parse_config(str(raw)), None


def raw_lambda_hint(head_and_tail: bytes) -> bool:
    """A cheap byte search for a serialized Lambda layer (used when h5py is missing)."""
    return b'"class_name": "Lambda"' in head_and_tail or b'"class_name":"Lambda"' in head_and_tail
