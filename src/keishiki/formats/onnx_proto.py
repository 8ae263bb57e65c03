"""A minimal protobuf wire-format walker for ONNX's ModelProto, without the onnx package.

Only the fields ``keishiki info`` needs are decoded.  Tensor payloads (``raw_data`` and the
packed typed fields such as ``float_data``) are never read: the walker records their
absolute byte range in the file, so a 2 GB embedded model is described by reading only its
small fields (:class:`FileReader` reads with ``pread``, message by message).

Field numbers follow onnx/onnx.proto (IR version 10).  Every length is checked against the
enclosing message before it is used, and nesting is capped, so truncated or hostile bytes
raise :class:`ProtoError` (turned into ``CorruptFile`` by the reader) instead of looping,
recursing without end or allocating what a length field claims.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

MAX_DEPTH = 32  # nested subgraphs (If/Loop/Scan bodies) deeper than this are refused

# wire types
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

# TensorProto typed-data fields: field number -> (wire encoding when packed, element format)
TYPED_FIELDS = {4: "f4", 5: "varint", 7: "varint", 10: "f8", 11: "varint"}
TYPED_FIELD_NAMES = {
    4: "float_data",
    5: "int32_data",
    7: "int64_data",
    10: "double_data",
    11: "uint64_data",
}


class ProtoError(Exception):
    """The bytes break the protobuf wire format (or ONNX's use of it) at ``offset``."""

    def __init__(self, reason: str, offset: int):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


def read_varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; returns (value, position after it)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtoError("truncated varint", pos)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError("varint longer than 10 bytes", pos)


def iter_fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for each field of the message in [start, end).

    ``value`` is an int for varint and fixed-width fields and a ``(begin, end)`` byte range
    for length-delimited ones (bytes are not copied).
    """
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0", pos)
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end)
        elif wire == LEN:
            length, pos = read_varint(buf, pos, end)
            if length > end - pos:
                raise ProtoError(f"field {number} claims {length} bytes, {end - pos} remain", pos)
            value = (pos, pos + length)
            pos += length
        elif wire == FIXED32:
            if pos + 4 > end:
                raise ProtoError("truncated fixed32", pos)
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        elif wire == FIXED64:
            if pos + 8 > end:
                raise ProtoError("truncated fixed64", pos)
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        else:  # groups (3/4) are not used by ONNX; 6/7 do not exist
            raise ProtoError(f"unsupported wire type {wire} for field {number}", pos)
        yield number, wire, value


def _text(buf: Any, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", "replace")


def _signed64(value: int) -> int:
    """A varint as protobuf int64/int32 (negative numbers are 10-byte two's complement)."""
    value &= (1 << 64) - 1  # a 10th byte may carry bits past 64: protobuf drops them
    return value - (1 << 64) if value >= 1 << 63 else value


def unpack_varints(buf: Any, span: tuple[int, int]) -> list[int]:
    """The signed integers of a packed repeated varint field."""
    out = []
    pos, end = span
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        out.append(_signed64(value))
    return out


# ---- messages --------------------------------------------------------------------------------


@dataclass
class Tensor:
    """A TensorProto with its payload located, not loaded."""

    name: str = ""
    data_type: int = 0
    dims: list[int] = field(default_factory=list)
    raw: tuple[int, int] | None = None  # raw_data byte range in the file
    typed: dict[int, Any] = field(default_factory=dict)  # field -> (begin, end) | [values]
    string_count: int = 0
    string_bytes: int = 0
    string_spans: list[tuple[int, int]] = field(default_factory=list)
    external: dict[str, str] = field(default_factory=dict)
    data_location: int = 0  # 1 = EXTERNAL
    has_segment: bool = False

    @property
    def is_external(self) -> bool:
        return self.data_location == 1 or bool(self.external)


@dataclass
class ValueInfo:
    """A ValueInfoProto: a name and a (summarised) TypeProto."""

    name: str
    type: dict[str, Any]


@dataclass
class Node:
    """A NodeProto: what ``info`` needs, plus tensors and subgraphs held in attributes."""

    op_type: str = ""
    domain: str = ""
    name: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    tensors: list[tuple[str, Tensor]] = field(default_factory=list)  # (attribute, tensor)
    subgraphs: list[tuple[str, "Graph"]] = field(default_factory=list)


@dataclass
class Graph:
    """A GraphProto."""

    name: str = ""
    nodes: list[Node] = field(default_factory=list)
    initializers: list[Tensor] = field(default_factory=list)
    n_sparse_initializers: int = 0
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)


@dataclass
class Model:
    """A ModelProto."""

    ir_version: int | None = None
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int | None = None
    doc_string: str = ""
    opset_import: list[tuple[str, int]] = field(default_factory=list)
    metadata_props: dict[str, str] = field(default_factory=dict)
    graph: Graph | None = None
    n_functions: int = 0
    n_training_info: int = 0


# ---- readers --------------------------------------------------------------------------------------


class BytesReader:
    """Protobuf fields of a message held in memory (tests, small files)."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
        return iter_fields(self.data, start, end)

    def read(self, span: tuple[int, int]) -> bytes:
        return self.data[span[0] : span[1]]

    def text(self, span: tuple[int, int]) -> str:
        return self.read(span).decode("utf-8", "replace")

    def varints(self, span: tuple[int, int]) -> list[int]:
        return unpack_varints(self.data, span)


WINDOW_BYTES = 1 << 20  # messages up to this size are read whole and walked in memory


class FileReader(BytesReader):
    """Protobuf fields of a file, read with ``pread`` and never memory-mapped.

    Messages up to :data:`WINDOW_BYTES` are read in one piece; larger ones (the graph, big
    tensors) are walked field by field with small reads, so a tensor's payload is skipped
    without touching its pages.  (A memory map would do the same work, but the kernel maps
    whole 2 MB folios around each touched byte, inflating RSS by ~2 MB per tensor.)
    """

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self._window = b""
        self._window_start = 0

    def _pread(self, start: int, end: int) -> bytes:
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start:
            raise ProtoError(
                f"file ends inside a field ({len(data)} of {end - start} bytes)", start
            )
        return data

    def _in_window(self, start: int, end: int) -> bool:
        return self._window_start <= start and end <= self._window_start + len(self._window)

    def read(self, span: tuple[int, int]) -> bytes:
        start, end = span
        if self._in_window(start, end):
            return self._window[start - self._window_start : end - self._window_start]
        return self._pread(start, end)

    def varints(self, span: tuple[int, int]) -> list[int]:
        data = self.read(span)
        return unpack_varints(data, (0, len(data)))

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
        if end - start > WINDOW_BYTES and not self._in_window(start, end):
            yield from self._stream(start, end)
            return
        if not self._in_window(start, end):
            self._window, self._window_start = self._pread(start, end), start
        window, base = self._window, self._window_start  # kept even if a nested read moves on
        for number, wire, value in iter_fields(window, start - base, end - base):
            if wire == LEN:
                value = (value[0] + base, value[1] + base)
            yield number, wire, value

    def _stream(self, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
        pos = start
        while pos < end:
            head = self._pread(pos, min(end, pos + 32))
            key, p = read_varint(head, 0, len(head))
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ProtoError("field number 0", pos)
            if wire == VARINT:
                value, p = read_varint(head, p, len(head))
            elif wire == LEN:
                length, p = read_varint(head, p, len(head))
                begin = pos + p
                if length > end - begin:
                    raise ProtoError(
                        f"field {number} claims {length} bytes, {end - begin} remain", begin
                    )
                value = (begin, begin + length)
                p += length
            elif wire in (FIXED32, FIXED64):
                width = 4 if wire == FIXED32 else 8
                if p + width > len(head):
                    raise ProtoError("truncated fixed-width field", pos + p)
                value = int.from_bytes(head[p : p + width], "little")
                p += width
            else:
                raise ProtoError(f"unsupported wire type {wire} for field {number}", pos + p)
            pos += p
            yield number, wire, value


def open_file(path: str) -> "FileReader":
    """A FileReader over ``path`` (close its ``fd`` with ``os.close``)."""
    fd = os.open(path, os.O_RDONLY)
    return FileReader(fd, os.fstat(fd).st_size)


Reader = BytesReader


def parse_string_entry(buf: Any, span: tuple[int, int]) -> tuple[str, str]:
    """A StringStringEntryProto -> (key, value)."""
    key = value = ""
    for number, wire, v in buf.fields(*span):
        if wire != LEN:
            continue
        if number == 1:
            key = buf.text(v)
        elif number == 2:
            value = buf.text(v)
    return key, value


def parse_tensor(buf: Any, span: tuple[int, int]) -> Tensor:
    """A TensorProto, recording payload byte ranges instead of copying them."""
    t = Tensor()
    for number, wire, v in buf.fields(*span):
        if number == 1:  # dims: packed (proto3 writers) or one varint per dim (old writers)
            if wire == LEN:
                t.dims.extend(buf.varints(v))
            elif wire == VARINT:
                t.dims.append(_signed64(v))
        elif number == 2 and wire == VARINT:
            t.data_type = v
        elif number == 3:
            t.has_segment = True
        elif number == 8 and wire == LEN:
            t.name = buf.text(v)
        elif number == 9 and wire == LEN:
            t.raw = v
        elif number in TYPED_FIELDS:
            if wire == LEN:
                t.typed[number] = v
            else:  # unpacked repeated scalars: rare, small, kept as values
                values = t.typed.setdefault(number, [])
                if isinstance(values, tuple):
                    raise ProtoError("packed and unpacked data mixed in one tensor", values[0])
                values.append((_signed64(v) if wire == VARINT else v, wire))
        elif number == 6 and wire == LEN:
            t.string_count += 1
            t.string_bytes += v[1] - v[0]
            t.string_spans.append(v)
        elif number == 13 and wire == LEN:
            key, value = parse_string_entry(buf, v)
            t.external[key] = value
        elif number == 14 and wire == VARINT:
            t.data_location = v
    return t


def parse_type(buf: Any, span: tuple[int, int], depth: int = 0) -> dict[str, Any]:
    """A TypeProto summarised: {"kind": "tensor", "elem_type": 1, "shape": [...] | None}.

    Shape entries are ints (dim_value), strings (dim_param) or None (unknown).
    """
    if depth > MAX_DEPTH:
        raise ProtoError("type nesting too deep", span[0])
    for number, wire, v in buf.fields(*span):
        if wire != LEN:
            continue
        if number in (1, 8):  # tensor_type / sparse_tensor_type
            out: dict[str, Any] = {
                "kind": "tensor" if number == 1 else "sparse_tensor",
                "elem_type": 0,
                "shape": None,
            }
            for n2, w2, v2 in buf.fields(*v):
                if n2 == 1 and w2 == VARINT:
                    out["elem_type"] = v2
                elif n2 == 2 and w2 == LEN:
                    out["shape"] = _parse_shape(buf, v2)
            return out
        if number in (4, 9):  # sequence_type / optional_type: elem_type is a TypeProto
            kind = "sequence" if number == 4 else "optional"
            elem = None
            for n2, w2, v2 in buf.fields(*v):
                if n2 == 1 and w2 == LEN:
                    elem = parse_type(buf, v2, depth + 1)
            return {"kind": kind, "elem": elem}
        if number == 5:  # map_type
            key_type, value = 0, None
            for n2, w2, v2 in buf.fields(*v):
                if n2 == 1 and w2 == VARINT:
                    key_type = v2
                elif n2 == 2 and w2 == LEN:
                    value = parse_type(buf, v2, depth + 1)
            return {"kind": "map", "key_type": key_type, "value": value}
    return {"kind": "unknown"}


def _parse_shape(buf: Any, span: tuple[int, int]) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for number, wire, v in buf.fields(*span):
        if number != 1 or wire != LEN:
            continue
        dim: int | str | None = None
        for n2, w2, v2 in buf.fields(*v):
            if n2 == 1 and w2 == VARINT:
                dim = _signed64(v2)
            elif n2 == 2 and w2 == LEN:
                param = buf.text(v2)
                # an empty dim_param counts as unset, as onnx's own printer treats it
                dim = param or dim
        dims.append(dim)
    return dims


def parse_value_info(buf: Any, span: tuple[int, int]) -> ValueInfo:
    """A ValueInfoProto."""
    name, typ = "", {"kind": "unknown"}
    for number, wire, v in buf.fields(*span):
        if number == 1 and wire == LEN:
            name = buf.text(v)
        elif number == 2 and wire == LEN:
            typ = parse_type(buf, v)
    return ValueInfo(name, typ)


def parse_attribute(buf: Any, span: tuple[int, int], node: Node, depth: int) -> None:
    """Collect the tensors (t, tensors) and subgraphs (g, graphs) of one AttributeProto."""
    name = ""
    tensors: list[Tensor] = []
    graphs: list[Graph] = []
    for number, wire, v in buf.fields(*span):
        if wire != LEN:
            continue
        if number == 1:
            name = buf.text(v)
        elif number in (5, 10):
            tensors.append(parse_tensor(buf, v))
        elif number in (6, 11):
            graphs.append(parse_graph(buf, v, depth + 1))
    node.tensors.extend((name, t) for t in tensors)
    node.subgraphs.extend((name, g) for g in graphs)


def parse_node(buf: Any, span: tuple[int, int], depth: int) -> Node:
    """A NodeProto."""
    node = Node()
    for number, wire, v in buf.fields(*span):
        if wire != LEN:
            continue
        if number == 1:
            node.inputs.append(buf.text(v))
        elif number == 2:
            node.outputs.append(buf.text(v))
        elif number == 3:
            node.name = buf.text(v)
        elif number == 4:
            node.op_type = buf.text(v)
        elif number == 7:
            node.domain = buf.text(v)
        elif number == 5:
            parse_attribute(buf, v, node, depth)
    return node


def parse_graph(buf: Any, span: tuple[int, int], depth: int = 0) -> Graph:
    """A GraphProto (nested subgraphs included, up to :data:`MAX_DEPTH`)."""
    if depth > MAX_DEPTH:
        raise ProtoError(f"subgraphs nested deeper than {MAX_DEPTH}", span[0])
    g = Graph()
    for number, wire, v in buf.fields(*span):
        if wire != LEN:
            continue
        if number == 1:
            g.nodes.append(parse_node(buf, v, depth))
        elif number == 2:
            g.name = buf.text(v)
        elif number == 5:
            g.initializers.append(parse_tensor(buf, v))
        elif number == 15:
            g.n_sparse_initializers += 1
        elif number == 11:
            g.inputs.append(parse_value_info(buf, v))
        elif number == 12:
            g.outputs.append(parse_value_info(buf, v))
    return g


def parse_model(buf: "Reader") -> Model:
    """The ModelProto filling ``buf`` (a :class:`FileReader` or :class:`BytesReader`)."""
    m = Model()
    for number, wire, v in buf.fields(0, buf.size):
        if number == 1 and wire == VARINT:
            m.ir_version = _signed64(v)
        elif number == 5 and wire == VARINT:
            m.model_version = _signed64(v)
        elif wire != LEN:
            continue
        elif number == 2:
            m.producer_name = buf.text(v)
        elif number == 3:
            m.producer_version = buf.text(v)
        elif number == 4:
            m.domain = buf.text(v)
        elif number == 6:
            m.doc_string = buf.text(v)
        elif number == 7:
            m.graph = parse_graph(buf, v)
        elif number == 8:
            domain, version = "", 0
            for n2, w2, v2 in buf.fields(*v):
                if n2 == 1 and w2 == LEN:
                    domain = buf.text(v2)
                elif n2 == 2 and w2 == VARINT:
                    version = _signed64(v2)
            m.opset_import.append((domain, version))
        elif number == 14:
            key, value = parse_string_entry(buf, v)
            m.metadata_props[key] = value
        elif number == 20:
            m.n_training_info += 1
        elif number == 25:
            m.n_functions += 1
    return m


# ---- sniffing -----------------------------------------------------------------------------------

# ModelProto fields and their wire types (anything else at the top level: not ONNX)
_MODEL_FIELDS = {
    1: VARINT,
    2: LEN,
    3: LEN,
    4: LEN,
    5: VARINT,
    6: LEN,
    7: LEN,
    8: LEN,
    14: LEN,
    20: LEN,
    25: LEN,
}
MAX_NAME_BYTES = 4096
_GRAPH_FIELDS = {
    1: LEN,
    2: LEN,
    5: LEN,
    10: LEN,
    11: LEN,
    12: LEN,
    13: LEN,
    14: LEN,
    15: LEN,
    16: LEN,
}


def looks_like_model(head: bytes, file_size: int) -> bool:
    """True when ``head`` (the file's first bytes) parses as the start of a ModelProto.

    Strict on purpose, since protobuf has no magic number: every top-level field must be a
    ModelProto field with its proper wire type, ``ir_version`` (when present) must be 1..20,
    the model must have a graph or opset imports, and the graph's first field must itself be
    a GraphProto field.  A field running past ``head`` must still fit in the file.
    """
    pos, end = 0, len(head)
    seen: dict[int, Any] = {}
    try:
        while pos < end:
            key, pos = read_varint(head, pos, end)
            number, wire = key >> 3, key & 7
            if _MODEL_FIELDS.get(number) != wire:
                return False
            if wire == VARINT:
                value, pos = read_varint(head, pos, end)
                seen[number] = value
                continue
            length, pos = read_varint(head, pos, end)
            if number in (2, 3, 4) and length > MAX_NAME_BYTES:
                return False  # producer name/version and domain are short strings
            if pos + length > file_size:
                # a truncated model: accept only a graph after a sane ir_version, so that
                # the reader can say "truncated" instead of "unknown format"
                if number != 7 or not 1 <= seen.get(1, 0) <= 20:
                    return False
                return _graph_start_ok(head, pos, min(end, pos + length))
            if number == 7 and not _graph_start_ok(head, pos, min(end, pos + length)):
                return False
            seen.setdefault(number, (pos, pos + length))
            pos += length
    except ProtoError:
        # a varint cut by the end of the head is fine only when the file goes on
        if end >= file_size:
            return False
    if pos > end and end >= file_size:
        return False
    ir_version = seen.get(1)
    if ir_version is not None and not 1 <= ir_version <= 20:
        return False
    if 7 not in seen and 8 not in seen:
        return False
    return ir_version is not None or (7 in seen and 8 in seen)


def _graph_start_ok(head: bytes, pos: int, end: int) -> bool:
    if pos >= end:
        return True  # graph begins beyond the head (or is empty): cannot judge, accept
    try:
        key, _ = read_varint(head, pos, end)
    except ProtoError:
        return True
    return _GRAPH_FIELDS.get(key >> 3) == key & 7
