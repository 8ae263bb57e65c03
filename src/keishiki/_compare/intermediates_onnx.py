"""ONNX intermediates: every node output made a graph output, run once in ONNX Runtime.

As Polygraphy's ``--onnx-outputs mark all`` does, on a copy of the graph held in memory: the
file is read without its external data, outputs are appended, and the session is built from
the serialized bytes with ONNX Runtime's ``session.model_external_initializers_file_folder_
path`` pointing at the model's folder, so external weights are read where they lie and
nothing is written.  Only the values leaving a module scope are fetched (see
:func:`keishiki._compare.intermediates.escaping_values`).
"""

from __future__ import annotations

import re

import numpy as np

from .._optional import require
from ..errors import InvalidRequest
from .intermediates import Capture, Probe, Side, escaping_values, float_array, onnx_scope_chain

_PAST = re.compile(r"^past_key_values\.\d+\.(key|value)$")
# operators that say how the weights were quantized (ONNX Runtime's quantization tools)
_INT8_OPS = {
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "QGemm",
    "QLinearConv",
    "ConvInteger",
    "QAttention",
    "DequantizeLinear",
}
_FORWARDING = {"Cast", "Identity"}
_FLOAT_TYPES = {10: "float16", 16: "bfloat16"}  # TensorProto.FLOAT16, BFLOAT16


def precision_of(model) -> str:
    """``4-bit``/``8-bit`` when the graph runs quantized operators (``MatMulNBits`` with its
    ``bits``, integer MatMuls and (de)quantize nodes), else the float type of its weights."""
    ops = {node.op_type for node in model.graph.node}
    bits = [
        a.i
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
        for a in node.attribute
        if a.name == "bits"
    ]
    if "MatMulNBits" in ops:
        return f"{min(bits) if bits else 4}-bit"
    if ops & _INT8_OPS:
        return "8-bit"
    for tensor in model.graph.initializer:
        if tensor.data_type in _FLOAT_TYPES:
            return _FLOAT_TYPES[tensor.data_type]
    return "float32"


def capture_onnx(side: Side, token_ids: list[int]) -> Capture:
    """Run ``side.model_file`` on ``token_ids`` with every node output exposed.

    Raises:
        InvalidRequest: the graph has an input keishiki cannot feed for one causal-LM step.
    """
    onnx = require("onnx", extra="onnx", purpose="expose ONNX intermediates")
    model = onnx.load(str(side.model_file), load_external_data=False)
    graph = model.graph
    chains = [
        onnx_scope_chain(n.name, {p.key: p.value for p in n.metadata_props}) for n in graph.node
    ]
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    returned = {o.name for o in graph.output}
    scoped = escaping_values(
        ((c, list(n.output)) for c, n in zip(chains, graph.node)),
        consumers,
        returned,
        _forwarded(graph),
    )
    for node in graph.node:  # mark all
        for name in node.output:
            if name and name not in returned:
                graph.output.append(onnx.ValueInfoProto(name=name))
                returned.add(name)
    wanted = sorted({name for values in scoped.values() for name, _ in values})
    if not wanted:
        raise InvalidRequest(
            f"{side.model_file}: its nodes name no module (neither "
            f"'/module/path/Op' names nor name_scopes metadata), so its "
            f"intermediates cannot be paired with another model's"
        )
    precision, n_marked = precision_of(model), len(returned)
    serialized = model.SerializeToString()
    del model, graph  # embedded weights: the proto, its bytes and the session hold a copy each
    session = _session(serialized, side)
    del serialized
    values = dict(zip(wanted, session.run(wanted, _feed(session, side, token_ids))))
    del session
    probes = []
    for module, produced in scoped.items():
        for index, (name, node_index) in enumerate(produced):
            array = float_array(values[name])
            if array is not None:
                probes.append(
                    Probe(module, index, array, node_index, module.count(".") + 1, name=name)
                )
    return Capture(
        str(side.path),
        side.format,
        "onnxruntime",
        precision,
        probes,
        [f"{n_marked} node outputs marked, {len(wanted)} leave a module"],
    )


def _forwarded(graph) -> dict[int, int | None]:
    """Cast and Identity nodes → the node producing their input (None: a graph input or
    initializer); see ``escaping_values``."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    return {
        i: producer.get(node.input[0])
        for i, node in enumerate(graph.node)
        if node.op_type in _FORWARDING and node.input
    }


def _session(serialized: bytes, side: Side):
    ort = require("onnxruntime", extra="onnx", purpose="run an ONNX model")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # external data stays where it is: ORT resolves its locations against this folder
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(side.model_file.parent)
    )
    try:
        return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise InvalidRequest(
            f"{side.model_file}: ONNX Runtime cannot load it: "
            f"{str(exc).strip().splitlines()[0][:200]}"
        ) from None


def _feed(session, side: Side, token_ids: list[int]) -> dict[str, np.ndarray]:
    """One prefill step's inputs in keishiki's / optimum's layout: ids, an all-ones mask,
    positions, an empty past (length 0) and ``use_cache_branch`` false."""
    from ..runtimes.base import model_config_value

    ids = np.asarray([token_ids], dtype=np.int64)
    known = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :],
        "use_cache_branch": np.array([False]),
    }
    feed = {}
    for item in session.get_inputs():
        if item.name in known:
            feed[item.name] = known[item.name]
        elif _PAST.match(item.name):
            shape = list(item.shape)
            heads = (
                shape[1]
                if isinstance(shape[1], int)
                else model_config_value(side.config, "num_key_value_heads", "num_attention_heads")
            )
            head_dim = (
                shape[3]
                if isinstance(shape[3], int)
                else (model_config_value(side.config, "head_dim") or _head_dim(side.config))
            )
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise InvalidRequest(
                    f"{side.model_file}: {item.name} has symbolic head sizes "
                    f"{shape} and no config.json beside it gives them"
                )
            dtype = np.float16 if item.type == "tensor(float16)" else np.float32
            feed[item.name] = np.zeros((1, heads, 0, head_dim), dtype)
        else:
            raise InvalidRequest(
                f"{side.model_file}: input {item.name!r} is not part of a "
                f"causal-LM step keishiki can feed (input_ids, attention_mask, "
                f"position_ids, past_key_values.N.key/value)"
            )
    return feed


def _head_dim(config: dict):
    from ..runtimes.base import model_config_value

    hidden = model_config_value(config, "hidden_size")
    heads = model_config_value(config, "num_attention_heads")
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) else None
