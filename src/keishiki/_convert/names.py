"""Map exporter-generated ONNX initializer names back to the model's parameter names.

Exporters rename weights: the TorchScript exporter with constant folding writes
``onnx::MatMul_<N>`` (a Linear weight, already transposed for MatMul), the dynamo exporter's
optimizer writes ``val_<N>``, and a wrapper module adds its attribute as a prefix.  The values
are untouched, so a tensor is found again by its bytes: each initializer is matched against the
state_dict tensors of the same dtype and shape, and for 2-D tensors against their transposes.
``keishiki map`` can use the same functions on any ONNX file plus the weights it came from.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

# metadata_props key listing initializers renamed after a parameter but stored transposed
TRANSPOSED_KEY = "keishiki:transposed_initializers"


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy view of a torch tensor or numpy array (bfloat16 kept as ml_dtypes.bfloat16)."""
    if isinstance(value, np.ndarray):
        return value
    # a torch.Tensor: numpy has no bfloat16, so reinterpret its bits
    if str(value.dtype) == "torch.bfloat16":
        import ml_dtypes

        return value.detach().cpu().view(dtype=_torch_int16()).numpy().view(ml_dtypes.bfloat16)
    return value.detach().cpu().numpy()


def _torch_int16():
    import torch

    return torch.int16


def _digest(arr: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    arr = np.ascontiguousarray(arr)
    return (
        arr.dtype.str,
        tuple(arr.shape),
        hashlib.blake2b(arr.tobytes(), digest_size=16).digest(),
    )


def _is_generated(name: str, params: Mapping[str, Any]) -> bool:
    return name not in params


def map_onnx_names(
    onnx_model: "onnx.ModelProto", state_dict: Mapping[str, Any], only_generated: bool = True
) -> dict[str, tuple[str, bool]]:
    """Find which parameter each ONNX initializer holds, by value.

    Args:
        onnx_model: a loaded ``onnx.ModelProto`` (external data loaded).
        state_dict: parameter name → torch tensor or numpy array.
        only_generated: skip initializers already named after a parameter.

    Returns:
        ``{onnx_name: (param_name, transposed)}`` for every initializer whose bytes equal a
        parameter (``transposed`` when it equals the parameter's transpose, as MatMul weights
        folded by the TorchScript exporter do).  A value held by several parameters (tied
        weights) maps to the first in state_dict order that is not already an initializer name.
    """
    from onnx import numpy_helper

    init_names = {t.name for t in onnx_model.graph.initializer}
    by_digest: dict[tuple, list[tuple[str, bool]]] = {}
    for pname, value in state_dict.items():
        arr = _to_numpy(value)
        by_digest.setdefault(_digest(arr), []).append((pname, False))
        if arr.ndim == 2:
            by_digest.setdefault(_digest(arr.T), []).append((pname, True))

    mapping: dict[str, tuple[str, bool]] = {}
    taken = {n for n in init_names if n in state_dict}
    for tensor in onnx_model.graph.initializer:
        if only_generated and not _is_generated(tensor.name, state_dict):
            continue
        candidates = by_digest.get(_digest(numpy_helper.to_array(tensor)), [])
        # prefer an untransposed match, then a name not used yet
        for pname, transposed in sorted(candidates, key=lambda c: (c[1], c[0] in taken)):
            if pname not in taken:
                mapping[tensor.name] = (pname, transposed)
                taken.add(pname)
                break
    return mapping


def strip_prefix_mapping(
    onnx_model: "onnx.ModelProto", prefix: str, state_dict: Mapping[str, Any] | None = None
) -> dict[str, tuple[str, bool]]:
    """``{name: (name without prefix, False)}`` for initializers named ``prefix + …``.

    With ``state_dict``, only names whose rest is a parameter; without, every prefixed name
    (non-persistent buffers such as ``rotary_emb.inv_freq`` are not in the state_dict).
    """
    out = {}
    for tensor in onnx_model.graph.initializer:
        rest = tensor.name[len(prefix) :]
        if tensor.name.startswith(prefix) and (state_dict is None or rest in state_dict):
            out[tensor.name] = (rest, False)
    return out


def rename_initializers(
    onnx_model: "onnx.ModelProto", mapping: Mapping[str, tuple[str, bool]]
) -> int:
    """Rename initializers (and every node/graph reference to them) in place.

    Transposed ones are listed in the model's ``metadata_props`` under :data:`TRANSPOSED_KEY`
    so that readers (``onnx → safetensors``) can undo the transpose.  Returns how many were
    renamed.  Names already used by another value in the graph are left alone.
    """
    graph = onnx_model.graph
    used = (
        {t.name for t in graph.initializer}
        | {v.name for v in graph.input}
        | {o for n in graph.node for o in n.output}
    )
    rename = {}
    for old, (new, _transposed) in mapping.items():
        if old != new and new not in used:
            rename[old] = new
            used.add(new)
    if not rename:
        return 0
    for tensor in graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
    for value in list(graph.input) + list(graph.value_info):
        value.name = rename.get(value.name, value.name)
    _rename_node_inputs(graph, rename)
    transposed = sorted(rename[o] for o, (_, t) in mapping.items() if t and o in rename)
    if transposed:
        _set_metadata(onnx_model, TRANSPOSED_KEY, json.dumps(transposed))
    return len(rename)


def _rename_node_inputs(graph, rename: Mapping[str, str]) -> None:
    # subgraphs (If/Loop bodies) may capture outer initializers by name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                _rename_node_inputs(attr.g, rename)
            for sub in attr.graphs:
                _rename_node_inputs(sub, rename)


def _set_metadata(onnx_model, key: str, value: str) -> None:
    for prop in onnx_model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = key, value


def transposed_initializers(onnx_model) -> set[str]:
    """Names recorded by :func:`rename_initializers` as stored transposed."""
    for prop in onnx_model.metadata_props:
        if prop.key == TRANSPOSED_KEY:
            return set(json.loads(prop.value))
    return set()


def generated_names(onnx_model) -> list[str]:
    """Initializer names that look exporter-generated (``onnx::…``, ``val_<N>``, ``_val_<N>``)."""
    import re

    pattern = re.compile(r"^(onnx::|_?val_\d+$)")
    return [t.name for t in onnx_model.graph.initializer if pattern.match(t.name)]
