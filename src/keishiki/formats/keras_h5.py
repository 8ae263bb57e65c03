"""keras-h5: HDF5 files (Keras 1/2/3 ``model.save('.h5')``, ``save_weights``, HF ``tf_model.h5``).

The HDF5 signature sits at byte 0 or at a power-of-two user-block offset (512, 1024, ...).
Datasets become tensors named by their HDF5 path (``model_weights/dense/dense/kernel:0``);
optimizer state (``optimizer_weights/``, Keras 3's ``optimizer/``) is counted but not
listed, so ``n_parameters`` is the model's.  The ``model_config`` JSON gives the layer
classes; ``Lambda`` layers hold marshalled Python bytecode that Keras would run on load,
so they are flagged.  Links to other files (HDF5 external links, external or virtual
dataset storage) are never followed.  h5py is imported only when reading (extra ``h5``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Callable

from .._optional import require
from ..core import dtypes
from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from .registry import Match

FORMAT = "keras-h5"
SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_DATASETS = 1_000_000
MAX_DEPTH = 64
_OPTIMIZER_ROOTS = ("optimizer_weights/", "optimizer/")


def signature_offset(head: bytes) -> int | None:
    """Where the HDF5 signature is in ``head`` (0, 512, 1024, ...), or None."""
    offset = 0
    while offset + 8 <= len(head):
        if head[offset : offset + 8] == SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def sniff(src: Source) -> Match | None:
    if src.is_dir or signature_offset(src.head) is None:
        return None
    return Match(FORMAT, None, reason="HDF5 signature")


def _h5py():
    return require("h5py", extra="h5", purpose="read HDF5 (Keras .h5) files")


def walk_datasets(h5file: Any, path: str) -> tuple[list[tuple[str, Any]], list[str]]:
    """(name, dataset) for every dataset reachable by hard links, and the names of links
    that point elsewhere (soft/external links, external or virtual storage), skipped."""
    h5py = _h5py()
    found: list[tuple[str, Any]] = []
    skipped: list[str] = []
    visited = [0]  # hard links can make a group reachable many times (or from itself)

    def visit(group: Any, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise CorruptFile(path, f"HDF5 groups nested deeper than {MAX_DEPTH}")
        for key in group:  # name order, as h5py's visititems
            name = f"{prefix}{key}"
            visited[0] += 1
            if visited[0] > 2 * MAX_DATASETS:
                raise CorruptFile(path, f"more than {2 * MAX_DATASETS} HDF5 objects")
            if not isinstance(group.get(key, getlink=True), h5py.HardLink):
                skipped.append(name)  # soft or external link: never followed
                continue
            obj = group[key]
            if isinstance(obj, h5py.Group):
                visit(obj, f"{name}/", depth + 1)
            elif isinstance(obj, h5py.Dataset):
                if obj.external or obj.is_virtual:
                    skipped.append(name)  # its bytes live in another file
                    continue
                found.append((name, obj))
                if len(found) > MAX_DATASETS:
                    raise CorruptFile(path, f"more than {MAX_DATASETS} datasets")

    visit(h5file, "", 0)
    return found, skipped


def dataset_info(name: str, ds: Any) -> TensorInfo:
    """A TensorInfo for one h5py Dataset (offset only for contiguous storage)."""
    shape = tuple(int(d) for d in (ds.shape or ()))
    dtype = ds.dtype
    name_of = dtypes.from_numpy(dtype) if dtype.fields is None and dtype.kind != "O" else str(dtype)
    offset = None
    if ds.chunks is None and ds.compression is None:
        try:
            offset = ds.id.get_offset()
        except Exception:  # no storage allocated yet (an empty dataset)
            offset = None
    return TensorInfo(name, name_of, shape, math.prod(shape) * dtype.itemsize, data_offset=offset)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _layers(config: Any) -> list[dict]:
    """The top-level layer configs of a Keras model config (Keras 1/2/3 layouts)."""
    inner = config.get("config") if isinstance(config, dict) else None
    if isinstance(inner, list):  # Keras 2.0 Sequential: the config *is* the layer list
        return [c for c in inner if isinstance(c, dict)]
    if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
        return [c for c in inner["layers"] if isinstance(c, dict)]
    return []


def lambda_layers(config: Any, found: list[dict] | None = None, depth: int = 0) -> list[dict]:
    """Every Lambda layer in a model config, nested models included: {name, code}."""
    found = [] if found is None else found
    if depth > 50:
        return found
    for layer in _layers(config):
        if layer.get("class_name") == "Lambda":
            cfg = layer.get("config") or {}
            fn = cfg.get("function")
            kind = (
                "python bytecode"
                if isinstance(fn, (list, dict))
                or (isinstance(fn, str) and cfg.get("function_type") == "lambda")
                else "named function"
            )
            found.append({"name": cfg.get("name") or layer.get("name"), "function": kind})
        lambda_layers(layer, found, depth + 1)
    return found


def summarize_config(config: Any) -> dict[str, Any]:
    """model_class, n_layers_in_config, layer_classes histogram, lambda_layers."""
    layers = _layers(config)
    return {
        "model_class": config.get("class_name") if isinstance(config, dict) else None,
        "n_layers_in_config": len(layers),
        "layer_classes": dict(Counter(str(layer.get("class_name")) for layer in layers)),
        "lambda_layers": lambda_layers(config),
    }


def lambda_warning(lambdas: list[dict]) -> str:
    names = ", ".join(str(x["name"]) for x in lambdas[:5])
    return (
        f"{len(lambdas)} Lambda layer(s) ({names}) hold Python code that Keras runs when "
        f"loading (safe_mode=False); load only if you trust the file"
    )


def _json_attr(attrs: Any, key: str, path: str) -> Any:
    if key not in attrs:
        return None
    try:
        return json.loads(_attr(attrs[key]))
    except (ValueError, TypeError, RecursionError) as exc:
        raise CorruptFile(path, f"attribute {key!r} is not valid JSON: {exc}") from None


def loader_for(open_file: Callable[[], Any]) -> Callable[[TensorInfo], np.ndarray]:
    """A tensor loader that opens the HDF5 file with ``open_file()`` for each read."""

    def load(info: TensorInfo) -> np.ndarray:
        with open_file() as f:
            return np.ascontiguousarray(f[info.name][()])

    return load


def read(src: Source, match) -> ModelInfo:
    h5py = _h5py()
    path = str(src.path)
    try:
        h5file = h5py.File(src.path, "r")
    except (OSError, ValueError) as exc:
        raise CorruptFile(src.path, f"HDF5 library refused the file: {exc}") from None
    with h5file:
        try:
            datasets, skipped = walk_datasets(h5file, path)
            root_attrs = {k: h5file.attrs[k] for k in h5file.attrs.keys()}
            model_config = _json_attr(root_attrs, "model_config", path)
            infos_all = [dataset_info(n, d) for n, d in datasets]
            top_level = sorted(h5file.keys())
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise CorruptFile(src.path, f"unreadable HDF5 structure: {exc}") from None
    is_keras = (
        any(k in root_attrs for k in ("keras_version", "model_config", "layer_names"))
        or "model_weights" in top_level
        or {"layers", "vars"} <= set(top_level)
    )
    variant = None if is_keras else "hdf5"
    weights = [t for t in infos_all if not t.name.startswith(_OPTIMIZER_ROOTS)]
    details: dict[str, Any] = {
        "top_level": top_level,
        "root_attrs": sorted(root_attrs),
        "keras_version": _attr(root_attrs.get("keras_version")),
        "backend": _attr(root_attrs.get("backend")),
        "n_datasets_total": len(infos_all),
        "n_weight_datasets": len(weights),
        "weight_param_count": sum(t.numel for t in weights),
        "has_optimizer_weights": any(k in top_level for k in ("optimizer_weights", "optimizer")),
    }
    warnings = []
    if skipped:
        details["skipped_links"] = skipped[:50]
        warnings.append(
            f"{len(skipped)} link(s) or dataset(s) point to other files and were not followed"
        )
    if model_config is not None:
        details.update(summarize_config(model_config))
        if details["lambda_layers"]:
            warnings.append(lambda_warning(details["lambda_layers"]))
    return ModelInfo(
        path=path,
        format=FORMAT,
        variant=variant,
        format_version=details["keras_version"],
        tensors=weights,
        warnings=warnings,
        details={FORMAT: details},
        tensor_loader=loader_for(lambda: h5py.File(src.path, "r")),
    )
