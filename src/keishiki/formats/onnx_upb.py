"""A small ModelProto parsed by protobuf's C parser (upb), turned into exactly the records
:mod:`.onnx_proto`'s walk gives (:class:`keishiki.formats.onnx.Parsed`), ~4x faster.

Why not always the walk: it decodes every field in Python (~30 µs per initializer: 30 ms
for a 1024-initializer graph), where protobuf parses the whole ModelProto in ~0.3 ms and the
rest is building the records.  Why not ``onnx.load``: ``import onnx`` costs ~0.8 s (its C++
checker, numpy, ml_dtypes), so onnx's own generated descriptor (``onnx/onnx_ml_pb2.py``) is
read as data into a private protobuf pool (~5 ms, once per process, for ONNX files only);
nothing of onnx is imported and onnx's own classes stay untouched.  Why not for every file:
upb copies each payload out of the bytes, so a file over :data:`FAST_MAX_BYTES` (embedded
weights) keeps the walk's small reads and flat memory.

Same result, by construction: the parse is used only when the file's bytes are exactly the
serialization of what upb parsed, unknown fields dropped (what ``onnx.save`` and the C++
writers produce).  Then no non-repeated field occurs twice (protobuf merges or keeps the
last, the walk replaces), no oneof holds two members, no field has a number or wire type
that the walk would refuse or skip, and the fields lie in field-number order, which locates
the embedded payloads below.  Any other file, or any surprise, falls back to the walk (which
also says what is wrong with a broken file).  ``tests/formats/test_onnx_upb.py`` compares
both on hand-made, corpus and damaged protobufs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from . import onnx_proto as pb

# Above this the walk (with its bounded reads) is used: upb holds the bytes, the parsed
# payload copies and the re-serialization at once.  Below it the scan's walk cannot reach
# its 5M-field bound either (every field takes two bytes or more).
FAST_MAX_BYTES = 8 << 20
STRING = 8  # TensorProto.STRING


class Fallback(Exception):
    """The parse cannot stand for the walk's (nesting past its bound, a position check)."""


@lru_cache(maxsize=1)
def model_class() -> Any:
    """onnx's ``ModelProto`` class, built in a private descriptor pool; None without onnx."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("onnx")
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = list(spec.submodule_search_locations)[0]
        with open(os.path.join(folder, "onnx_ml_pb2.py"), encoding="utf-8") as fh:
            source = fh.read()
        # the generated module's one call: AddSerializedFile(b'<FileDescriptorProto>')
        marker = ".AddSerializedFile("
        start = source.index(marker) + len(marker)
        literal = source[start : source.index(")\n", start)]
        if not (literal.startswith("b'") and literal.endswith("'")):
            return None
        # an ASCII bytes literal with Python escapes, read without importing ast
        blob = literal[2:-1].encode("ascii").decode("unicode_escape").encode("latin-1")
    except Exception:  # no onnx, or not the generated file we know: walk instead
        return None
    try:
        # what descriptor_pool.DescriptorPool() and message_factory.GetMessageClass() do
        # with the upb backend, without importing them (they cost ~7 ms more: text_format,
        # python_message...); upb makes the sub-message classes on first use
        from google._upb import _message
        from google.protobuf import message

        pool = _message.DescriptorPool()
        pool.AddSerializedFile(blob)
        descriptor = pool.FindMessageTypeByName("onnx.ModelProto")
        return _message.MessageMeta(
            "ModelProto", (message.Message,), {"DESCRIPTOR": descriptor, "__module__": None}
        )
    except Exception:  # another protobuf backend or version: the public way
        pass
    try:
        from google.protobuf import descriptor_pool, message_factory

        public_pool = descriptor_pool.DescriptorPool()
        public_pool.AddSerializedFile(blob)
        descriptor = public_pool.FindMessageTypeByName("onnx.ModelProto")
        return message_factory.GetMessageClass(descriptor)
    except Exception:  # no protobuf, or one too old for onnx's descriptor: walk instead
        return None


# The last canonical parse of a small file, (bytes, message): ``inspect`` reads a model and
# then scans the same bytes for its external-data verdict.  Read-only for every user.
_LAST: list[tuple[bytes, Any]] = []
_REMEMBER_BYTES = 2 << 20


def parse(data: bytes) -> Any:
    """The ModelProto of ``data`` when upb parses it and ``data`` is its canonical
    serialization (see the module docstring); None otherwise.  Callers must not modify it.
    """
    if len(data) > FAST_MAX_BYTES:
        return None
    last = _LAST[0] if _LAST else None
    if last is not None and last[0] == data:
        return last[1]
    cls = model_class()
    if cls is None:
        return None
    try:
        model = cls.FromString(data)
        model.DiscardUnknownFields()
        same = model.SerializeToString() == data
    except Exception:  # DecodeError, recursion limit: the walk says what is wrong
        return None
    if not same:
        return None
    if len(data) <= _REMEMBER_BYTES:
        _LAST[:] = [(data, model)]
    return model


def text(value: Any) -> str:
    """A string field as the walk decodes it (upb hands back bytes when not UTF-8)."""
    return value if value.__class__ is str else value.decode("utf-8", "replace")


class BareTensor:
    """A TensorProto without embedded payload (external data or empty), duck-typing
    :class:`onnx_proto.Tensor`."""

    __slots__ = ("name", "data_type", "dims", "external", "data_location", "has_segment")
    raw = None
    typed: dict[int, Any] = {}  # never written: read as "no typed data"
    string_count = string_bytes = 0
    string_spans: list[tuple[int, int]] = []

    def __init__(
        self,
        name: str,
        data_type: int,
        dims: list[int],
        external: dict[str, str],
        data_location: int,
        has_segment: bool,
    ):
        self.name = name
        self.data_type = data_type
        self.dims = dims
        self.external = external
        self.data_location = data_location
        self.has_segment = has_segment

    @property
    def is_external(self) -> bool:
        return self.data_location == 1 or bool(self.external)


def _has_payload(t: Any) -> bool:
    return bool(
        t.HasField("raw_data")
        or t.float_data
        or t.int32_data
        or t.string_data
        or t.int64_data
        or t.double_data
        or t.uint64_data
    )


def _unsigned(value: int) -> int:
    # the walk reads data_type/data_location as the raw varint: int32 -1 is 2**64 - 1
    return value if value >= 0 else value + (1 << 64)


class Converter:
    """Turns a canonical upb ModelProto into what :func:`keishiki.formats.onnx.parse` returns:
    the model-level record, the graph's value infos and node facts, and the tensors in the
    walk's order with their embedded payloads located in ``data``."""

    def __init__(self, data: bytes):
        self.data = data

    # ---- tensors ------------------------------------------------------------------------------

    def tensor(self, t: Any, span: Any) -> Any:
        """A :class:`BareTensor`, or the walk's own Tensor when a payload must be located
        (``span()`` gives the TensorProto's byte range)."""
        entries = t.external_data
        location = t.data_location
        data_type = t.data_type
        # the reader and the loader read an external tensor's data from its file whatever
        # the message also embeds, except strings (string_data); others need their bytes
        if not ((location == 1 or entries) and data_type != STRING) and _has_payload(t):
            return pb.parse_tensor(pb.BytesReader(self.data), span())
        external = {}
        for entry in entries:
            key, value = entry.key, entry.value
            if key.__class__ is not str or value.__class__ is not str:
                key, value = text(key), text(value)
            external[key] = value
        name = t.name
        return BareTensor(
            name if name.__class__ is str else text(name),
            data_type if data_type >= 0 else data_type + (1 << 64),
            list(t.dims),
            external,
            location,  # an enum: an unknown value is an unknown field (not canonical)
            t.HasField("segment"),
        )

    def graph(
        self, g: Any, prefix: str, span: Any, out: list[tuple[Any, dict[str, str]]], depth: int = 0
    ) -> tuple[list[str], int]:
        """Append (tensor, where) to ``out`` as ``onnx._graph_tensors`` yields them; returns
        the graph's op types and its node count with subgraphs (``onnx._count_nodes``).
        ``span()`` gives the GraphProto's content range (used only to locate a payload)."""
        if depth > pb.MAX_DEPTH:
            raise Fallback("subgraphs nested past the walk's bound")
        if depth:  # the walk reads a subgraph's value infos too (and bounds their nesting)
            for info in (*g.input, *g.output):
                self.value_info(info)
        spans: list[Any] = []  # [node spans, initializer spans], filled on first need

        def child(kind: int, index: int) -> tuple[int, int]:
            if not spans:
                spans.extend(self._graph_spans(g, *span()))
            return spans[kind][index]

        for k, t in enumerate(g.initializer):
            tensor = self.tensor(t, lambda k=k: child(1, k))
            out.append((tensor, {"source": "initializer", "name": tensor.name, "graph": prefix}))
        op_types = []
        count = 0
        for index, node in enumerate(g.node):
            op_type = node.op_type
            if op_type.__class__ is not str:
                op_type = text(op_type)
            op_types.append(op_type)
            count += 1
            attributes = node.attribute
            if not attributes:
                continue
            node_id = text(node.name) or f"{op_type}_{index}"
            node_span = lambda index=index: child(0, index)  # noqa: E731
            located: list[Any] = []  # the node's attribute parts, walked on first need

            def part(
                a: int, field: int, i: int, node_span: Any = node_span, located: list = located
            ) -> Any:
                if not located:
                    located.append(self._attribute_parts(*node_span()))
                return located[0][a][field][i]

            if op_type == "Constant" and not node.domain:
                outputs = node.output
                name = text(outputs[0]) if outputs and outputs[0] else node_id
                where = {"source": "constant", "name": name, "graph": prefix}
                for a, attr in enumerate(attributes):
                    if text(attr.name) != "value":
                        continue
                    if attr.HasField("t"):
                        out.append((self.tensor(attr.t, lambda a=a: part(a, 5, 0)), dict(where)))
                    for i, t in enumerate(attr.tensors):
                        tensor = self.tensor(t, lambda a=a, i=i: part(a, 10, i))
                        out.append((tensor, dict(where)))
            for a, attr in enumerate(attributes):
                graphs = ([(6, 0, attr.g)] if attr.HasField("g") else []) + [
                    (11, i, sub) for i, sub in enumerate(attr.graphs)
                ]
                for field, i, sub in graphs:
                    _ops, nodes = self.graph(
                        sub,
                        f"{prefix}{node_id}/{text(attr.name)}/",
                        lambda a=a, field=field, i=i: part(a, field, i),
                        out,
                        depth + 1,
                    )
                    count += nodes
        return op_types, count

    # ---- locating payloads --------------------------------------------------------------------

    def _graph_spans(self, g: Any, start: int, end: int) -> list[list[tuple[int, int]]]:
        """[node spans, initializer spans] of a GraphProto's content: in canonical order the
        nodes (field 1) come first, then the name (2), then the initializers (5); each
        message's size is upb's, checked against the tag and length in the bytes."""
        data = self.data
        nodes, pos = self._consecutive(g.node, start, end, 0x0A)
        if g.HasField("name"):
            if pos >= end or data[pos] != 0x12:
                raise Fallback("graph name not where expected")
            length, pos = pb.read_varint(data, pos + 1, end)
            pos += length
        initializers, _ = self._consecutive(g.initializer, pos, end, 0x2A)
        return [nodes, initializers]

    def _consecutive(
        self, messages: Any, pos: int, end: int, tag: int
    ) -> tuple[list[tuple[int, int]], int]:
        data = self.data
        out = []
        for message in messages:
            if pos >= end or data[pos] != tag:
                raise Fallback("repeated field not where expected")
            length, pos = pb.read_varint(data, pos + 1, end)
            if length != message.ByteSize() or pos + length > end:
                raise Fallback("message size differs from upb's")
            out.append((pos, pos + length))
            pos += length
        return out, pos

    def _attribute_parts(self, start: int, end: int) -> list[dict[int, list[tuple[int, int]]]]:
        """For each AttributeProto of a NodeProto: {field: [spans]} of its t (5), g (6),
        tensors (10) and graphs (11), read from the bytes (nodes are small)."""
        out = []
        for number, wire, span in pb.iter_fields(self.data, start, end):
            if number == 5 and wire == pb.LEN:
                parts: dict[int, list[tuple[int, int]]] = {5: [], 6: [], 10: [], 11: []}
                for n2, w2, v2 in pb.iter_fields(self.data, *span):
                    if n2 in parts and w2 == pb.LEN:
                        parts[n2].append(v2)
                out.append(parts)
        return out

    # ---- the rest -----------------------------------------------------------------------------

    @staticmethod
    def model_record(m: Any) -> pb.Model:
        """The model-level fields (graph left None: the caller keeps the upb graph)."""
        record = pb.Model(
            ir_version=m.ir_version if m.HasField("ir_version") else None,
            producer_name=text(m.producer_name),
            producer_version=text(m.producer_version),
            domain=text(m.domain),
            model_version=m.model_version if m.HasField("model_version") else None,
            doc_string=text(m.doc_string),
            opset_import=[(text(o.domain), o.version) for o in m.opset_import],
            n_functions=len(m.functions),
            n_training_info=len(m.training_info),
        )
        for entry in m.metadata_props:
            record.metadata_props[text(entry.key)] = text(entry.value)
        return record

    @staticmethod
    def value_info(vi: Any) -> pb.ValueInfo:
        """A ValueInfoProto as :func:`onnx_proto.parse_value_info` gives it."""
        return pb.ValueInfo(
            text(vi.name), _type(vi.type) if vi.HasField("type") else {"kind": "unknown"}
        )


def _type(t: Any, depth: int = 0) -> dict[str, Any]:
    """A TypeProto as :func:`onnx_proto.parse_type` summarises it."""
    if depth > pb.MAX_DEPTH:
        raise Fallback("type nesting past the walk's bound")
    which = t.WhichOneof("value")
    if which == "tensor_type" or which == "sparse_tensor_type":
        inner = t.tensor_type if which == "tensor_type" else t.sparse_tensor_type
        shape: list[int | str | None] | None = None
        if inner.HasField("shape"):
            shape = []
            for d in inner.shape.dim:
                if d.HasField("dim_value"):
                    shape.append(d.dim_value)
                elif d.HasField("dim_param"):
                    shape.append(text(d.dim_param) or None)
                else:
                    shape.append(None)
        return {
            "kind": "tensor" if which == "tensor_type" else "sparse_tensor",
            "elem_type": _unsigned(inner.elem_type),
            "shape": shape,
        }
    if which in ("sequence_type", "optional_type"):
        inner = getattr(t, which)
        elem = _type(inner.elem_type, depth + 1) if inner.HasField("elem_type") else None
        return {"kind": "sequence" if which == "sequence_type" else "optional", "elem": elem}
    if which == "map_type":
        inner = t.map_type
        value = _type(inner.value_type, depth + 1) if inner.HasField("value_type") else None
        return {"kind": "map", "key_type": _unsigned(inner.key_type), "value": value}
    return {"kind": "unknown"}
