"""ONNX external-data locations, read straight from the protobuf wire format.

An initializer stored outside the model names its file in ``external_data`` (key
``location``).  ``onnx.load`` resolves it against the model's folder; an absolute path, a
``..`` component or a symlink that leads outside makes a model read any file on the
machine (CVE-2024-27318 and friends).  Parsing the wire format ourselves needs no onnx
package and has no 2 GB protobuf limit; only the message paths that hold tensors are
descended into, iteratively.  A small file whose bytes are canonical protobuf is read
through protobuf's C parser instead (:mod:`keishiki.formats.onnx_upb`, the parse ``info``
already made of the same bytes), visiting the same tensors in the same order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

_MAX_DEPTH = 64
_MAX_FIELDS = 5_000_000

# message kind -> {field number: child message kind}
_PATHS = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


class NotOnnx(Exception):
    """The bytes are not a protobuf ModelProto."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise NotOnnx("bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or (start, end)) of one message's fields."""
    pos = start
    while pos < end:
        key = buf[pos]  # one-byte keys and lengths (nearly all) without a call
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise NotOnnx("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value
        elif wire == 1:
            pos += 8
            yield field, wire, None
        elif wire == 2:
            length = buf[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise NotOnnx("length beyond the message")
            yield field, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
            yield field, wire, None
        else:
            raise NotOnnx(f"wire type {wire}")
    if pos != end:
        raise NotOnnx("message overruns")


def _tensor_location(buf, start: int, end: int) -> tuple[str, str | None]:
    """(tensor name, external location or None) of one TensorProto."""
    name, location = "", None
    for field, wire, value in _fields(buf, start, end):
        if field == 8 and wire == 2:
            name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif field == 13 and wire == 2:
            key = val = None
            for f2, w2, v2 in _fields(buf, *value):
                if w2 == 2 and f2 in (1, 2):
                    text = bytes(buf[v2[0] : v2[1]]).decode("utf-8", "replace")
                    key, val = (text, val) if f2 == 1 else (key, text)
            if key == "location":
                location = val
    return name, location


def external_locations(buf) -> list[tuple[str, str]]:
    """(tensor name, location) for every tensor stored as external data in a ModelProto.

    Raises:
        NotOnnx: the bytes do not parse as a ModelProto with a graph.
    """
    if buf.__class__ is bytes:
        from ..formats import onnx_upb

        # protobuf's C parser, when the bytes are exactly what it would write (the walk
        # below and this one then see the same fields); the walk for anything else
        model = onnx_upb.parse(buf)
        if model is not None:
            return _locations_parsed(model)
    return _locations_walked(buf)


def _locations_parsed(model: Any) -> list[tuple[str, str]]:
    """:func:`_locations_walked` over a canonical upb ModelProto: the same stack, children
    pushed in the bytes' order (field-number order), so the same list in the same order.
    A graph's sparse initializers and initializers, which that stack pops right after
    pushing them, are taken at once, and nodes without attributes are not pushed (same
    order, same depth checks)."""
    from ..formats.onnx_upb import text

    out: list[tuple[str, str]] = []
    todo = [("model", model, 0)]
    while todo:
        kind, msg, depth = todo.pop()
        if depth > _MAX_DEPTH:
            raise NotOnnx("nesting too deep")
        depth += 1
        if kind == "tensor":
            _parsed_location(msg, out, text)
        elif kind == "graph":
            _push_nodes(todo, msg.node, depth)
            if depth > _MAX_DEPTH and (msg.sparse_initializer or msg.initializer):
                raise NotOnnx("nesting too deep")
            for sparse in reversed(msg.sparse_initializer):
                if depth + 1 > _MAX_DEPTH and (
                    sparse.HasField("indices") or sparse.HasField("values")
                ):
                    raise NotOnnx("nesting too deep")
                if sparse.HasField("indices"):
                    _parsed_location(sparse.indices, out, text)
                if sparse.HasField("values"):
                    _parsed_location(sparse.values, out, text)
            for tensor in reversed(msg.initializer):
                _parsed_location(tensor, out, text)
        elif kind == "node":
            todo.extend(("attribute", a, depth) for a in msg.attribute)
        elif kind == "attribute":
            if msg.HasField("t"):
                todo.append(("tensor", msg.t, depth))
            if msg.HasField("g"):
                todo.append(("graph", msg.g, depth))
            todo.extend(("tensor", t, depth) for t in msg.tensors)
            todo.extend(("graph", g, depth) for g in msg.graphs)
            if msg.HasField("sparse_tensor"):
                todo.append(("sparse", msg.sparse_tensor, depth))
            todo.extend(("sparse", t, depth) for t in msg.sparse_tensors)
        elif kind == "sparse":
            if msg.HasField("values"):
                todo.append(("tensor", msg.values, depth))
            if msg.HasField("indices"):
                todo.append(("tensor", msg.indices, depth))
        elif kind == "function":
            _push_nodes(todo, msg.node, depth)
        else:  # the model
            if msg.HasField("graph"):
                todo.append(("graph", msg.graph, depth))
            todo.extend(("function", f, depth) for f in msg.functions)
    if not model.HasField("graph"):
        raise NotOnnx("no graph")
    return out


def _push_nodes(todo: list, nodes: Any, depth: int) -> None:
    """Push the nodes that have attributes: the others hold nothing, and the stack would
    only have checked their depth."""
    if nodes and depth > _MAX_DEPTH:
        raise NotOnnx("nesting too deep")
    todo.extend(("node", n, depth) for n in nodes if n.attribute)


def _parsed_location(tensor: Any, out: list[tuple[str, str]], text: Callable[[Any], str]) -> None:
    """:func:`_tensor_location` of a upb TensorProto, appended to ``out`` when external
    (``text``: :func:`keishiki.formats.onnx_upb.text`)."""
    location = None
    for entry in tensor.external_data:
        key = entry.key
        if key == "location" or (key.__class__ is not str and text(key) == "location"):
            location = text(entry.value) if entry.HasField("value") else None
    if location is not None:
        out.append((text(tensor.name), location))


def _locations_walked(buf) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    todo = [("model", 0, len(buf), 0)]
    fields = 0
    saw_graph = False
    while todo:
        kind, start, end, depth = todo.pop()
        if depth > _MAX_DEPTH:
            raise NotOnnx("nesting too deep")
        if kind == "tensor":
            name, location = _tensor_location(buf, start, end)
            if location is not None:
                out.append((name, location))
            continue
        children = _PATHS[kind]
        for field, wire, value in _fields(buf, start, end):
            fields += 1
            if fields > _MAX_FIELDS:
                raise NotOnnx("too many fields")
            if kind == "model" and field == 7:
                saw_graph = True
            if wire == 2 and field in children:
                todo.append((children[field], value[0], value[1], depth + 1))
    if not saw_graph:
        raise NotOnnx("no graph")
    return out


def judge_location(model_path: Path, location: str) -> tuple[str, str]:
    """(severity, reason) for one external-data location relative to the model file."""
    norm = location.replace("\\", "/")
    if "\0" in location:
        # C and C++ loaders (onnxruntime) cut the path at the NUL: what they open is not
        # what the name shows, and nothing legitimate writes one
        return "dangerous", f"external-data location {location!r} holds a NUL byte"
    if not location or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "dangerous", f"absolute external-data location {location!r}: reads any file"
    if ".." in norm.split("/"):
        return "dangerous", (
            f"external-data location {location!r} climbs out of the model folder with '..'"
        )
    root = model_path.parent.resolve()
    target = model_path.parent / location
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError):
        return "dangerous", f"external-data location {location!r} cannot be resolved (loop?)"
    if not resolved.is_relative_to(root):
        return "dangerous", (
            f"external-data location {location!r} resolves through a symlink "
            f"to {resolved}, outside the model folder"
        )
    if not os.path.exists(resolved):
        return "safe", f"external-data file {location!r} is missing"
    return "safe", f"external data in {location!r} inside the model folder"
