"""torch7: Lua Torch ``torch.save`` files (binary or ascii), read by keishiki's own parser.

There is no magic number, so the sniffer parses: the root value must be a table, torch
object or function carrying memo index 1, and the first values must parse.  Tensors are
named by their path in the object tree the way PyTorch names the equivalent model: the
children of a container's ``modules`` list become ``0``, ``1``... (``0.weight``,
``2.bias``), any other table key is used as is, and a tensor at the root is ``tensor``.
Lua bytecode in function values is recorded by size and never loaded.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from . import _torch7_parse as t7
from .registry import Match

FORMAT = "torch7"
MAX_ASCII_BYTES = 1 << 30  # ascii files are parsed in memory
_ROOT_TAGS = {3, 4, 6, 7, 8}
_DIGITS = b"0123456789"


def _sniff_binary(src: Source) -> bool:
    head = src.head
    if len(head) < 12 or int.from_bytes(head[:4], "little") not in _ROOT_TAGS:
        return False
    if int.from_bytes(head[4:8], "little") != 1:  # the root object is always memo index 1
        return False
    for long_size in (8, 4):
        parser = t7.parser_for(io.BytesIO(head), src.size, ascii=False, long_size=long_size)
        try:
            parser.read()
            if parser.s.pos == src.size:  # torch.save writes exactly one object
                return True
        except t7.Truncated:
            # the head ends mid-object: plausible when enough of it parsed
            if len(head) < src.size and parser.s.pos >= 24:
                return True
        except (t7.Malformed, RecursionError, ValueError, OverflowError):
            pass
    # no clean parse, but the file opens with a Torch object header ("V 1" + a class name
    # such as torch.FloatTensor): claim it, so the reader names what is wrong (truncated,
    # storage too small...) instead of "not a model file"
    return _torch_object_header(head)


def _torch_object_header(head: bytes) -> bool:
    """True when ``head`` starts with a binary Torch7 object: tag 4, memo index 1, a version
    string ``V <n>`` and a dotted ASCII class name (``torch.FloatTensor``, ``nn.Sequential``)."""
    if len(head) < 16 or head[:8] != b"\x04\x00\x00\x00\x01\x00\x00\x00":
        return False
    n = int.from_bytes(head[8:12], "little")
    version = head[12 : 12 + n]
    if not 3 <= n <= 16 or not version.startswith(b"V ") or not version[2:].isdigit():
        return False
    pos = 12 + n
    m = int.from_bytes(head[pos : pos + 4], "little")
    name = head[pos + 4 : pos + 4 + m]
    return 3 <= m <= 200 and len(name) == m and b"." in name and all(0x21 <= c < 0x7F for c in name)


def _sniff_ascii(src: Source) -> bool:
    head = src.head
    lines = head[:32].split(b"\n")
    if len(lines) < 3 or not lines[0].isdigit() or int(lines[0]) not in _ROOT_TAGS:
        return False
    if lines[1].strip() != b"1":
        return False
    parser = t7.parser_for(head, src.size, ascii=True)
    try:
        parser.read()
        return not head[parser.s.pos :].strip()  # nothing but whitespace after the object
    except t7.Truncated:
        return len(head) < src.size and parser.s.pos >= 16
    except (t7.Malformed, RecursionError, ValueError, OverflowError):
        return False


def sniff(src: Source) -> Match | None:
    if src.is_dir or src.size < 8:
        return None
    if src.head[:1] in (b"\x03", b"\x04", b"\x06", b"\x07", b"\x08") and _sniff_binary(src):
        return Match(FORMAT, "binary", reason="Torch7 binary object stream (parsed)")
    if src.head[:1] in _DIGITS and _sniff_ascii(src):
        return Match(FORMAT, "ascii", reason="Torch7 ascii object stream (parsed)")
    return None


def parse(src: Source, variant: str) -> t7.Parser:
    """Parse the whole file; returns the parser (``.memo``, ``.root_header``, root in ``.root``).

    Binary files are tried with 8-byte longs, then 4-byte longs (files written on Windows
    or 32-bit systems), as torchfile does.

    Raises:
        CorruptFile: truncated, malformed, or absurd sizes.
    """
    if variant == "ascii":
        if src.size > MAX_ASCII_BYTES:
            raise CorruptFile(
                src.path,
                f"ascii Torch7 file of {src.size} bytes exceeds the "
                f"{MAX_ASCII_BYTES}-byte limit; re-save it in binary mode",
            )
        parser = t7.parser_for(src.path.read_bytes(), src.size, ascii=True)
        _run(src, parser)
        return parser
    # the reading that ends exactly at the end of the file wins (torch.save writes one
    # object); an 8-byte reading with trailing bytes is kept when no exact reading exists,
    # a 4-byte one never (too easy to misread garbage that way)
    first_error: CorruptFile | None = None
    partial: t7.Parser | None = None
    for long_size in (8, 4):
        with open(src.path, "rb") as fh:
            parser = t7.parser_for(fh, src.size, ascii=False, long_size=long_size)
            try:
                _run(src, parser)
            except CorruptFile as exc:
                first_error = first_error or exc
                continue
        parser.long_size = long_size  # type: ignore[attr-defined]
        if parser.s.pos == src.size:
            return parser
        if long_size == 8:
            partial = parser
    if partial is not None:
        return partial
    assert first_error is not None
    raise first_error


def _run(src: Source, parser: t7.Parser) -> None:
    try:
        parser.root = parser.read()  # type: ignore[attr-defined]
    except t7.Truncated as exc:
        raise CorruptFile(
            src.path, "truncated Torch7 object stream", offset=exc.args[0] if exc.args else None
        ) from None
    except t7.Malformed as exc:
        raise CorruptFile(src.path, str(exc), offset=parser.s.pos) from None
    except RecursionError:
        raise CorruptFile(src.path, "objects nested too deeply") from None


def _key_name(key: Any) -> str:
    if isinstance(key, bool):
        return str(key).lower()
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    if isinstance(key, (str, float)):
        return str(key)
    return f"[{type(key).__name__.lower()}]"


def _key_order(key: Any) -> tuple:
    """Numbers first in numeric order, then everything else in file order."""
    if isinstance(key, float) and not isinstance(key, bool):
        return (0, key)
    return (1, 0)


MAX_LISTED_FUNCTIONS = 100  # enough to name them; a hostile file may hold millions
# what the equivalent PyTorch module holds of a Lua nn module's tensors (parameters and the
# BatchNorm statistics); gradWeight, gradBias, output, gradInput, finput, save_mean ... are
# gradients, activations and workspaces of the last training step: "transient"
MODULE_STATE = frozenset({"weight", "bias", "running_mean", "running_var"})
_NN_PACKAGES = ("nn.", "cudnn.", "cunn.", "nngraph.")


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


class _Walker:
    """Names tensors by their first path in the tree and builds the module tree."""

    def __init__(self):
        self.tensors: list[tuple[str, Any, bool]] = []  # (name, object, transient)
        self.seen: set[int] = set()
        self.n_empty = 0
        self.n_functions = 0
        self.functions: list[tuple[str, int]] = []  # (path, bytecode bytes), for scan

    def walk(self, obj: Any, path: str, node: dict) -> None:
        if isinstance(obj, (t7.Tensor, t7.Storage, t7.Table, t7.TorchObject, t7.Function)):
            if id(obj) in self.seen:
                return  # shared (or cyclic) reference: named where first seen
            self.seen.add(id(obj))
        if isinstance(obj, t7.Tensor):
            if obj.storage is None:
                self.n_empty += 1
            else:
                transient = (
                    str(node.get("class", "")).startswith(_NN_PACKAGES)
                    and path.rpartition(".")[2] not in MODULE_STATE
                )
                self.tensors.append((path or "tensor", obj, transient))
        elif isinstance(obj, t7.Storage):
            self.tensors.append((path or "storage", obj, False))
        elif isinstance(obj, t7.Function):
            self.n_functions += 1
            self.functions.append((path or "<root>", obj.bytecode_size))
            # a closure's upvalues are values torch.load restores too: more functions
            # (each one more piece of code) and tensors can hide there
            if obj.upvalues is not None:
                self._fields(obj.upvalues, _join(path or "<root>", "<upvalues>"), node)
        elif isinstance(obj, t7.TorchObject):
            child = {"name": path, "class": obj.class_name, "children": []}
            node["children"].append(child)
            self._fields(obj.content, path, child)
            if not child["children"]:
                del child["children"]
        elif isinstance(obj, t7.Table):
            self._fields(obj, path, node)

    def _fields(self, table: Any, path: str, node: dict) -> None:
        if not isinstance(table, t7.Table):
            self.walk(table, path, node)
            return
        # a container's children first, so a module reachable from several fields (nngraph
        # keeps it in its nodes too) is named by its place in `modules`, as PyTorch would
        items = sorted(table.items, key=lambda kv: kv[0] != "modules")
        for key, value in items:
            if key == "modules" and isinstance(value, t7.Table) and id(value) not in self.seen:
                # PyTorch numbers a container's children from 0, Lua from 1
                self.seen.add(id(value))
                children = sorted(value.items, key=lambda kv: _key_order(kv[0]))
                for k, child in children:
                    name = (
                        str(int(k) - 1) if isinstance(k, float) and k.is_integer() else _key_name(k)
                    )
                    self.walk(child, _join(path, name), node)
            else:
                self.walk(value, _join(path, _key_name(key)), node)


def _tensor_info(name: str, obj: Any, ascii: bool, transient: bool = False) -> TensorInfo:
    if isinstance(obj, t7.Storage):
        shape, itemsize = (obj.size,), np.dtype(obj.dtype).itemsize
        offset = obj.data_offset
        return TensorInfo(
            name,
            obj.dtype,
            shape,
            obj.size * itemsize,
            data_offset=offset,
            extra={"torch_class": obj.class_name},
        )
    itemsize = np.dtype(obj.dtype).itemsize
    numel = math.prod(obj.shape)
    contiguous = list(obj.stride) == [math.prod(obj.shape[i + 1 :]) for i in range(len(obj.shape))]
    offset = None
    if not ascii and contiguous and obj.storage.data_offset is not None:
        offset = obj.storage.data_offset + obj.storage_offset * itemsize
    extra: dict[str, Any] = {"torch_class": obj.class_name}
    if transient:
        extra["transient"] = True
    return TensorInfo(
        name, obj.dtype, tuple(obj.shape), numel * itemsize, data_offset=offset, extra=extra
    )


def _loader(path: Path, objects: dict[str, Any], ascii: bool):
    def load(info: TensorInfo) -> np.ndarray:
        obj = objects[info.name]
        if isinstance(obj, t7.Storage):
            return t7.load_values(path, obj, ascii).astype(obj.dtype)
        values = t7.load_values(path, obj.storage, ascii)
        itemsize = values.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            values[obj.storage_offset :],
            shape=obj.shape,
            strides=[s * itemsize for s in obj.stride],
        )
        return np.array(view, dtype=obj.dtype)

    return load


def _flat_modules(nodes: list[dict]):
    for node in nodes:
        yield node["name"], node["class"]
        yield from _flat_modules(node.get("children", []))


def _summary(parser: t7.Parser) -> dict[str, Any]:
    root = parser.root  # type: ignore[attr-defined]
    code = {type(None): 0, float: 1, str: 2, t7.Table: 3, bool: 5}.get(type(root), 4)
    out: dict[str, Any] = {"root_type_code": code}
    if isinstance(root, t7.Function):
        out["root_type_code"] = {v: k for k, v in t7.TYPE_NAMES.items()}[root.kind]
        out["root_type"] = root.kind
        out["bytecode_bytes"] = root.bytecode_size
        return out
    out["root_type"] = t7.TYPE_NAMES[out["root_type_code"]]
    if parser.root_header is not None:
        version, out["torch_class"] = parser.root_header
        if version is not None:
            out["version"] = version
    # what torchfile reports: a table's key count, and its length when it is a sequence;
    # a tds.Vec is a sequence and a tds.Hash a map, whatever their keys
    if isinstance(root, t7.Table):
        out["n_keys"] = len(root.items)
        if root.is_list and root.items:
            out["len"] = len(root.items)
    elif isinstance(root, t7.TorchObject) and isinstance(root.content, t7.Table):
        if root.class_name == "tds.Vec":
            out["len"] = len(root.content.items)
        elif root.class_name == "tds.Hash":
            out["n_keys"] = len(root.content.items)
    return out


def read(src: Source, match) -> ModelInfo:
    variant = match.variant or "binary"
    parser = parse(src, variant)
    walker = _Walker()
    tree: dict[str, Any] = {"name": "", "children": []}
    walker.walk(parser.root, "", tree)  # type: ignore[attr-defined]
    ascii = variant == "ascii"
    infos, objects = [], {}
    for name, obj, transient in walker.tensors:
        base, n = name, 1
        while name in objects:  # two paths to different objects with one name (rare)
            n += 1
            name = f"{base}#{n}"
        objects[name] = obj
        infos.append(_tensor_info(name, obj, ascii, transient))
    details = _summary(parser)
    if tree["children"]:
        # {path: class} like PyTorch's named_modules() ("" is the root), plus the nesting
        details["modules"] = dict(_flat_modules(tree["children"]))
        details["module_tree"] = (
            tree["children"][0] if len(tree["children"]) == 1 else tree["children"]
        )
    details["long_size"] = getattr(parser, "long_size", None) if not ascii else None
    details["n_empty_tensors"] = walker.n_empty
    warnings = []
    if walker.n_functions or isinstance(parser.root, t7.Function):  # type: ignore[attr-defined]
        details["n_functions"] = max(walker.n_functions, 1)
        details["functions"] = [
            {"path": p, "bytecode_bytes": n} for p, n in walker.functions[:MAX_LISTED_FUNCTIONS]
        ]
        warnings.append(
            "holds Lua functions (bytecode): Lua torch.load would load and may run "
            "them; keishiki only recorded their size"
        )
    if not ascii and parser.s.pos != src.size:
        warnings.append(f"{src.size - parser.s.pos} bytes after the object were not read")
    version = details.get("version")
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        variant=variant,
        format_version=version,
        tensors=infos,
        warnings=warnings,
        details={FORMAT: details},
        tensor_loader=_loader(src.path, objects, ascii),
    )
