"""torch-export: ``torch.export.save`` ``.pt2`` archives (the PT2 archive format), read without torch.

torch >= 2.6 writes ``<root>/archive_format`` (``pt2``), ``archive_version``, ``byteorder``,
``models/<name>.json`` (the serialized ExportedProgram: graph nodes, the graph signature
that maps placeholder names to parameter/buffer/constant names, tensor metadata),
``data/weights/<name>_weights_config.json`` (fqn -> weight file + dtype/sizes/strides) with
the raw bytes in ``data/weights/weight_<i>``, and the same for ``data/constants/``.  Older
torch (2.1-2.5) wrote ``serialized_exported_program.json`` plus a torch.save'd
``serialized_state_dict.pt``: those are listed from the JSON's tensor metadata (no data).

Everything here is JSON and raw bytes: no pickle is read and torch is never imported.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from ..core import dtypes
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from . import _torch_pickle as torch_pickle
from .registry import Match

FORMAT = "torch-export"
MAX_JSON_BYTES = 512 * 1024 * 1024

# torch/_export/serde/schema.py ScalarType (serialized as its int value, or its name)
SCALAR_TYPES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    9: "complex32",
    10: "complex64",
    11: "complex128",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    29: "float8_e4m3fn",
    30: "float8_e5m2",
    31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz",
    34: "uint32",
    35: "uint64",
}
_SCALAR_NAMES = {
    "BYTE": 1,
    "CHAR": 2,
    "SHORT": 3,
    "INT": 4,
    "LONG": 5,
    "HALF": 6,
    "FLOAT": 7,
    "DOUBLE": 8,
    "COMPLEXHALF": 9,
    "COMPLEXFLOAT": 10,
    "COMPLEXDOUBLE": 11,
    "BOOL": 12,
    "BFLOAT16": 13,
    "UINT16": 28,
    "FLOAT8E4M3FN": 29,
    "FLOAT8E5M2": 30,
    "UINT32": 34,
    "UINT64": 35,
}
_SPEC_KINDS = {  # input_specs entry kind -> (name field, role)
    "parameter": ("parameter_name", "parameter"),
    "buffer": ("buffer_name", "buffer"),
    "tensor_constant": ("tensor_constant_name", "constant"),
    "custom_obj": ("custom_obj_name", "custom_obj"),
    "constant_input": ("name", "constant_input"),
}


def _root(names: list[str]) -> str | None:
    """The folder prefix of a PT2 archive (``m/``), or None when this is not one."""
    for n in names:
        if n == "archive_format" or n.endswith("/archive_format") and n.count("/") == 1:
            return n[: -len("archive_format")]
    for n in names:
        if n.endswith("serialized_exported_program.json"):
            return n[: -len("serialized_exported_program.json")]
    return None


def sniff(src: Source) -> Match | None:
    if src.is_dir or not src.looks_like_zip:
        return None
    names = src.zip_names
    root = _root(names)
    if root is None:
        return None
    if f"{root}archive_format" in names:
        try:
            if src.read_member(f"{root}archive_format", 64).strip() != b"pt2":
                return None
        except CorruptFile:
            return None
    return Match(FORMAT, None, reason="zip with archive_format=pt2 / serialized_exported_program")


# ---- JSON helpers --------------------------------------------------------------------------


def _json(src: Source, name: str) -> Any:
    try:
        return json.loads(src.read_member(name, MAX_JSON_BYTES))
    except (ValueError, RecursionError) as exc:  # (also ints past 4300 digits)
        raise CorruptFile(src.path, f"{name}: invalid JSON: {exc}") from None


def scalar_type(code: Any) -> str:
    if isinstance(code, str):
        code = _SCALAR_NAMES.get(code.upper(), code)
    if isinstance(code, int) and not isinstance(code, bool):
        return SCALAR_TYPES.get(code, f"scalar_type_{code}")
    return f"scalar_type_{str(code)[:20]}"


def _dims(values: Any) -> tuple[int, ...]:
    """Sizes/strides as serialized: [{"as_int": 4}, {"as_expr": ...}] -> ints (-1 symbolic)."""
    out = []
    for v in values or []:
        if isinstance(v, dict) and isinstance(v.get("as_int"), int):
            out.append(v["as_int"])
        elif isinstance(v, int):
            out.append(v)
        else:
            out.append(-1)
    return tuple(out)


def _signature(program: dict) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of the graph signature as {kind, arg, target[, persistent]}."""
    sig = (program.get("graph_module") or {}).get("signature") or {}
    inputs, outputs = [], []
    for spec in sig.get("input_specs") or []:
        if not isinstance(spec, dict) or not spec:
            continue
        kind, body = next(iter(spec.items()))
        body = body if isinstance(body, dict) else {}
        arg = body.get("arg") or {}
        arg_name = (
            arg.get("name")
            or (arg.get("as_tensor") or {}).get("name")
            or next((v.get("name") for v in arg.values() if isinstance(v, dict)), None)
        )
        entry = {"kind": kind, "arg": arg_name}
        field, _role = _SPEC_KINDS.get(kind, (None, None))
        if field and field in body:
            entry["target"] = body[field]
        if "persistent" in body:
            entry["persistent"] = body["persistent"]
        inputs.append(entry)
    for spec in sig.get("output_specs") or []:
        if isinstance(spec, dict) and spec:
            kind, body = next(iter(spec.items()))
            arg = (body or {}).get("arg") or {}
            name = (arg.get("as_tensor") or {}).get("name") or arg.get("name")
            entry = {"kind": kind, "arg": name}
            for key in ("parameter_name", "buffer_name", "user_input_name"):
                if isinstance(body, dict) and key in body:
                    entry["target"] = body[key]
            outputs.append(entry)
    return inputs, outputs


def _ops(program: dict) -> tuple[int, dict[str, int]]:
    nodes = ((program.get("graph_module") or {}).get("graph") or {}).get("nodes") or []
    counts = Counter(str(n.get("target")) for n in nodes if isinstance(n, dict))
    return len(nodes), dict(counts.most_common())


# ---- reading ---------------------------------------------------------------------------------


def _weights(
    src: Source,
    root: str,
    model: str,
    folder: str,
    config_name: str,
    role_of: dict[str, str],
    refs: dict[str, torch_pickle.TensorRef],
) -> list[TensorInfo]:
    name = f"{root}data/{folder}/{config_name.format(model)}"
    if name not in src.zip_name_set:
        return []
    config = (_json(src, name) or {}).get("config") or {}
    out = []
    for fqn, entry in config.items():
        if not isinstance(entry, dict):
            continue
        meta = entry.get("tensor_meta") or {}
        dtype = scalar_type(meta.get("dtype"))
        shape, stride = _dims(meta.get("sizes")), _dims(meta.get("strides"))
        offset_elems = (meta.get("storage_offset") or {}).get("as_int", 0) or 0
        member = f"{root}data/{folder}/{entry.get('path_name')}"
        itemsize = dtypes.itemsize(dtype) or 1
        extra: dict[str, Any] = {
            "role": role_of.get(fqn, "constant" if folder == "constants" else "weight"),
            "stride": list(stride),
            "storage_offset": offset_elems,
        }
        data_offset = None
        if entry.get("use_pickle"):
            extra["pickled"] = True  # a torch.save'd tensor: listed, not loaded
        elif (
            member in src.zip_name_set
            and min(shape + stride, default=0) >= 0
            and dtypes.itemsize(dtype) is not None
            and len(shape) == len(stride)
            and type(offset_elems) is int
            and offset_elems >= 0
        ):
            start = torch_pickle.zip_data_offset(src, member)
            size = src.zip().getinfo(member).file_size
            storage = torch_pickle.StorageRef(
                entry.get("path_name", ""),
                dtype,
                size // itemsize,
                str((meta.get("device") or {}).get("type", "cpu")),
            )
            ref = torch_pickle.TensorRef(storage, dtype, offset_elems, shape, stride, "tensor")
            if math.prod(shape) and offset_elems + torch_pickle.span(shape, stride) > storage.numel:
                raise CorruptFile(src.path, f"tensor {fqn!r}: view overruns {member!r}")
            refs[fqn] = ref
            if start is not None:
                data_offset = start + offset_elems * itemsize
        if not torch_pickle.is_contiguous(shape, stride):
            extra["contiguous"] = False
        out.append(
            TensorInfo(
                fqn, dtype, shape, max(0, math.prod(shape)) * itemsize, data_offset, member, extra
            )
        )
    return out


def _from_graph_meta(program: dict, inputs: list[dict]) -> list[TensorInfo]:
    """Tensors named by the signature, typed by the graph's tensor_values (old format)."""
    values = ((program.get("graph_module") or {}).get("graph") or {}).get("tensor_values") or {}
    out = []
    for spec in inputs:
        kind = spec["kind"]
        if kind not in ("parameter", "buffer", "tensor_constant") or spec.get("arg") not in values:
            continue
        meta = values[spec["arg"]]
        dtype = scalar_type(meta.get("dtype"))
        shape = _dims(meta.get("sizes"))
        out.append(
            TensorInfo(
                spec.get("target", spec["arg"]),
                dtype,
                shape,
                max(0, math.prod(shape)) * (dtypes.itemsize(dtype) or 1),
                extra={"role": _SPEC_KINDS[kind][1]},
            )
        )
    return out


def read(src: Source, match) -> ModelInfo:
    """Tensors (from the weights configs), graph signature and op counts of a .pt2 archive.

    Raises:
        CorruptFile: missing members, invalid JSON, or JSON that breaks the schema.
    """
    try:
        return _read(src)
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
        # the ExportedProgram schema is deep; a value of the wrong type anywhere in it is a
        # broken file, reported in one line rather than guarded at every access
        raise CorruptFile(
            src.path, f"malformed exported program JSON ({type(exc).__name__}: {exc})"
        ) from None


def _read(src: Source) -> ModelInfo:
    names = src.zip_names
    root = _root(names)
    if root is None:
        raise CorruptFile(src.path, "not a PT2 archive")
    models = sorted(
        n[len(root) + len("models/") : -len(".json")]
        for n in names
        if n.startswith(f"{root}models/")
        and n.endswith(".json")
        and n.count("/") == root.count("/") + 1
    )
    legacy_json = f"{root}serialized_exported_program.json"
    if models:
        model = "model" if "model" in models else models[0]
        program = _json(src, f"{root}models/{model}.json")
    elif legacy_json in names:
        model, program = None, _json(src, legacy_json)
    else:
        raise CorruptFile(
            src.path, "PT2 archive has no models/*.json nor serialized_exported_program.json"
        )
    if not isinstance(program, dict):
        raise CorruptFile(src.path, "exported program JSON is not an object")
    inputs, outputs = _signature(program)
    role_of = {
        s["target"]: _SPEC_KINDS[s["kind"]][1]
        for s in inputs
        if s["kind"] in _SPEC_KINDS and "target" in s
    }
    refs: dict[str, torch_pickle.TensorRef] = {}
    if model is not None:
        tensors = _weights(src, root, model, "weights", "{}_weights_config.json", role_of, refs)
        tensors += _weights(
            src, root, model, "constants", "{}_constants_config.json", role_of, refs
        )
        order = {s.get("target"): i for i, s in enumerate(inputs)}
        tensors.sort(key=lambda t: order.get(t.name, len(order)))
    else:
        tensors = _from_graph_meta(program, inputs)
    n_nodes, op_counts = _ops(program)
    call_graph = (program.get("graph_module") or {}).get("module_call_graph") or []
    forward_args = None
    if call_graph and isinstance(call_graph[0], dict):
        forward_args = (call_graph[0].get("signature") or {}).get("forward_arg_names")
    details = {
        "archive_prefix": root.rstrip("/"),
        "archive_version": _small(src, f"{root}archive_version"),
        "layout": "pt2-archive" if model is not None else "serialized_exported_program (torch<2.6)",
        "models": models,
        "schema_version": torch_pickle.plain_value(program.get("schema_version")),
        "torch_version": torch_pickle.plain_value(program.get("torch_version")),
        "opset_version": torch_pickle.plain_value(program.get("opset_version")),
        "verifiers": torch_pickle.plain_value(program.get("verifiers")),
        "inputs": torch_pickle.plain_value(inputs, max_items=100_000),
        "outputs": torch_pickle.plain_value(outputs, max_items=100_000),
        "user_inputs": [s["arg"] for s in inputs if s["kind"] == "user_input"],
        "forward_arg_names": torch_pickle.plain_value(forward_args),
        "n_parameters": sum(1 for s in inputs if s["kind"] == "parameter"),
        "n_buffers": sum(1 for s in inputs if s["kind"] == "buffer"),
        "n_nodes": n_nodes,
        "op_counts": op_counts,
        "byteorder": _small(src, f"{root}byteorder"),
        "has_sample_inputs": any(n.startswith(f"{root}data/sample_inputs/") for n in names),
        "has_aotinductor": any(n.startswith(f"{root}data/aotinductor/") for n in names),
    }
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        format_version=details["archive_version"],
        tensors=tensors,
        details={FORMAT: details},
        graph=None,
        tensor_loader=_loader(src, refs, details["byteorder"] or "little"),
    )


def _loader(src: Source, refs: dict[str, torch_pickle.TensorRef], byteorder: str):
    base = torch_pickle.loader_for(src.path, refs, byteorder)

    def load(info: TensorInfo):
        if info.name not in refs:
            from ..errors import InvalidRequest

            raise InvalidRequest(
                f"{src.path}: tensor {info.name!r} is stored pickled or only "
                f"described (old .pt2 layout); keishiki does not load it"
            )
        return base(info)

    return load


def _small(src: Source, name: str) -> str | None:
    if name not in src.zip_name_set:
        return None
    return src.read_member(name, 4096).decode("utf-8", "replace").strip()
