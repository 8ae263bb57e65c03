"""ONNX: a protobuf ModelProto, its initializers embedded or in external data files.

Read without importing the onnx package: a small file (a graph whose weights are external
data) is parsed by protobuf's C parser with onnx's schema (:mod:`.onnx_upb`, when its bytes
are canonical), anything else by :mod:`.onnx_proto`'s walk, which skips every tensor
payload, recording where it lies; both give the same :class:`Parsed`.  External data locations
are resolved only inside the model's folder (``Source.child``: absolute paths, ``..`` and
symlinks leading out are refused, CVE-2024-27318); files that are simply absent are listed
in ``graph["missing_external_data_files"]``.

Accepted paths: a ``.onnx`` file (any name: judged by content), or a folder holding exactly
one ONNX file (the ONNX backend-test layout ``test_X/model.onnx`` + ``test_data_set_0/``,
or ``model.onnx`` + ``model.onnx.data``).
"""

from __future__ import annotations

import math
import mmap
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..core import dtypes
from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile, InvalidRequest
from . import onnx_proto as pb
from . import onnx_upb
from .registry import Match

FORMAT = "onnx"

# onnx.TensorProto.DataType names, as onnx prints value infos (FLOAT[1, 3])
ONNX_TYPE_NAMES = {
    0: "UNDEFINED",
    1: "FLOAT",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FLOAT16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    14: "COMPLEX64",
    15: "COMPLEX128",
    16: "BFLOAT16",
    17: "FLOAT8E4M3FN",
    18: "FLOAT8E4M3FNUZ",
    19: "FLOAT8E5M2",
    20: "FLOAT8E5M2FNUZ",
    21: "UINT4",
    22: "INT4",
    23: "FLOAT4E2M1",
    24: "FLOAT8E8M0",
    25: "UINT2",
    26: "INT2",
    27: "FLOAT6E2M3",
    28: "FLOAT6E3M2",
}

# Names that exporters invent, and what they mean (see docs/inspect.md).
GENERATED_NAMES = [
    (
        "onnx::MatMul_<N>",
        re.compile(r"^onnx::MatMul_\d+$"),
        "TorchScript-based exporter (dynamo=False) with constant folding: a Linear weight folded "
        "into an already transposed MatMul operand, shape (in_features, out_features); the "
        "PyTorch parameter name is lost",
    ),
    (
        "onnx__MatMul_<N>",
        re.compile(r"^onnx__MatMul_\d+$"),
        "the same folded, transposed Linear weight (onnx::MatMul_<N>) with '::' sanitised to "
        "'__', as written when each tensor of a >2 GB export goes to its own external data file",
    ),
    (
        "onnx::<Op>_<N>",
        re.compile(r"^onnx::[A-Za-z]+_\d+$"),
        "TorchScript-based exporter: a value folded into a constant feeding an <Op> node; the "
        "original parameter name is lost",
    ),
    (
        "onnx__<Op>_<N>",
        re.compile(r"^onnx__[A-Za-z]+_\d+$"),
        "TorchScript-based exporter's onnx::<Op>_<N> name sanitised for an external data file",
    ),
    (
        "val_<N>",
        re.compile(r"^val_\d+$"),
        "dynamo exporter (dynamo=True) with its default optimize=True: a value renamed by the "
        "optimizer (constant folding / deduplication); export with optimize=False to keep "
        "parameter names",
    ),
    (
        "Constant_<N>_attr__value",
        re.compile(r"^Constant_\d+_attr__value$"),
        "a Constant node's 'value' tensor moved to external data (named after the node and its "
        "attribute)",
    ),
]


# ---- sniffing -----------------------------------------------------------------------------------


def _model_file(src: Source) -> Path | None:
    """The ONNX file: the path itself, or the only ONNX file directly inside a folder."""
    if not src.is_dir:
        return src.path
    candidates = [n for n in src.files() if n.lower().endswith(".onnx")]
    if len(candidates) != 1:
        return None
    path = src.path / candidates[0]
    return path if path.is_file() and not path.is_symlink() else None


def _file_looks_onnx(path: Path, head: bytes | None = None) -> bool:
    if head is None:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    return pb.looks_like_model(head, path.stat().st_size)


def sniff(src: Source) -> Match | None:
    path = _model_file(src)
    if path is None:
        return None
    if not _file_looks_onnx(path, None if src.is_dir else src.head):
        return None
    try:
        parsed = parse(path)
    except pb.ProtoError:
        # the start is a ModelProto but the rest is broken: let read() say what is wrong
        return Match(FORMAT, "embedded", reason="protobuf ModelProto start (damaged further on)")
    except (OSError, ValueError):
        return None
    if not parsed.has_graph and not parsed.model.opset_import:
        return None
    variant = "external-data" if any(t.is_external for t, _ in parsed.tensors) else "embedded"
    where = f"folder with one ONNX file ({path.name})" if src.is_dir else "protobuf ModelProto"
    return Match(FORMAT, variant, reason=f"{where}: ir_version, opset imports and graph parse")


# ---- parsing ------------------------------------------------------------------------------------


@dataclass
class Parsed:
    """What :func:`read` needs from a ModelProto, however it was parsed."""

    model: pb.Model  # the model-level fields (its ``graph`` is not used past parsing)
    has_graph: bool
    tensors: list[tuple[Any, dict[str, str]]]  # (tensor, where) as _all_tensors yields them
    graph_name: str = ""
    init_names: set[str] = field(default_factory=set)
    n_initializers: int = 0
    n_sparse_initializers: int = 0
    inputs: list[pb.ValueInfo] = field(default_factory=list)
    outputs: list[pb.ValueInfo] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)  # the main graph's nodes
    n_nodes_with_subgraphs: int = 0


def parse(path: Path) -> Parsed:
    """The ModelProto of ``path`` as :class:`Parsed` records (tensor payloads located, not
    read); cached per file state.

    Raises:
        pb.ProtoError: the bytes are not a well-formed ModelProto.
    """
    st = os.stat(path)
    return _parse_cached(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _parse_cached(path: str, size: int, _mtime_ns: int) -> Parsed:
    if size == 0:
        raise pb.ProtoError("empty file", 0)
    if size <= onnx_upb.FAST_MAX_BYTES:
        with open(path, "rb") as fh:
            parsed = _parse_fast(fh.read())
        if parsed is not None:
            return parsed
    reader = pb.open_file(path)
    try:
        return _from_walk(pb.parse_model(reader))
    finally:
        os.close(reader.fd)


def _from_walk(model: pb.Model) -> Parsed:
    graph = model.graph or pb.Graph()
    return Parsed(
        model=model,
        has_graph=model.graph is not None,
        tensors=list(_all_tensors(model)),
        graph_name=graph.name,
        init_names={t.name for t in graph.initializers},
        n_initializers=len(graph.initializers),
        n_sparse_initializers=graph.n_sparse_initializers,
        inputs=graph.inputs,
        outputs=graph.outputs,
        op_types=[n.op_type for n in graph.nodes],
        n_nodes_with_subgraphs=_count_nodes(graph),
    )


def _all_tensors(model: pb.Model):
    """(tensor, where) for initializers and Constant values of the graph and its subgraphs.

    ``where`` is {"source": "initializer"|"constant", "name": ..., "graph": subgraph path}.
    """
    if model.graph is None:
        return
    yield from _graph_tensors(model.graph, "")


def _graph_tensors(graph: pb.Graph, prefix: str):
    for t in graph.initializers:
        yield t, {"source": "initializer", "name": t.name, "graph": prefix}
    for index, node in enumerate(graph.nodes):
        node_id = node.name or f"{node.op_type}_{index}"
        if node.op_type == "Constant" and not node.domain:
            for attr, t in node.tensors:
                if attr == "value":
                    name = node.outputs[0] if node.outputs and node.outputs[0] else node_id
                    yield t, {"source": "constant", "name": name, "graph": prefix}
        for attr, sub in node.subgraphs:
            yield from _graph_tensors(sub, f"{prefix}{node_id}/{attr}/")


def _count_nodes(graph: pb.Graph) -> int:
    return sum(1 + sum(_count_nodes(g) for _, g in n.subgraphs) for n in graph.nodes)


def _parse_fast(data: bytes) -> Parsed | None:
    """The same Parsed through protobuf's C parser (:mod:`.onnx_upb`), or None when only the
    walk can say (not canonical bytes, no onnx/protobuf, nesting past the walk's bound)."""
    message = onnx_upb.parse(data)
    if message is None:
        return None
    conv = onnx_upb.Converter(data)
    graph = message.graph

    def graph_span() -> tuple[int, int]:
        for number, wire, span in pb.iter_fields(data, 0, len(data)):
            if number == 7 and wire == pb.LEN:
                return span
        raise onnx_upb.Fallback("no graph field")

    try:
        tensors: list[tuple[Any, dict[str, str]]] = []
        op_types, n_nodes = conv.graph(graph, "", graph_span, tensors)
        n_init = len(graph.initializer)
        return Parsed(
            model=conv.model_record(message),
            has_graph=message.HasField("graph"),
            tensors=tensors,
            graph_name=onnx_upb.text(graph.name),
            init_names={t.name for t, _where in tensors[:n_init]},
            n_initializers=n_init,
            n_sparse_initializers=len(graph.sparse_initializer),
            inputs=[conv.value_info(v) for v in graph.input],
            outputs=[conv.value_info(v) for v in graph.output],
            op_types=op_types,
            n_nodes_with_subgraphs=n_nodes,
        )
    except onnx_upb.Fallback:
        return None


# ---- reading ------------------------------------------------------------------------------------


def describe_type(t: dict[str, Any]) -> str:
    """A TypeProto summary as onnx prints it: ``FLOAT['batch', 3]``, ``seq(INT64[])``."""
    kind = t.get("kind")
    if kind in ("tensor", "sparse_tensor"):
        name = ONNX_TYPE_NAMES.get(t["elem_type"], f"TYPE_{t['elem_type']}")
        shape = t.get("shape")
        dims = (
            ""
            if shape is None
            else "[" + ", ".join(repr("?" if d is None else d) for d in shape) + "]"
        )
        return ("sparse " if kind == "sparse_tensor" else "") + name + dims
    if kind in ("sequence", "optional"):
        inner = describe_type(t["elem"]) if t.get("elem") else "?"
        return f"{'seq' if kind == 'sequence' else 'optional'}({inner})"
    if kind == "map":
        value = describe_type(t["value"]) if t.get("value") else "?"
        return f"map({ONNX_TYPE_NAMES.get(t['key_type'], '?')}, {value})"
    return "unknown"


def _value_infos(infos: list[pb.ValueInfo], exclude: set[str]) -> tuple[list[str], list[dict]]:
    text, structured = [], []
    for vi in infos:
        if vi.name in exclude:
            continue
        described = describe_type(vi.type)
        text.append(f"{vi.name}:{described}")
        entry: dict[str, Any] = {"name": vi.name, "type": described}
        if vi.type.get("kind") == "tensor":
            entry["dtype"] = dtypes.from_onnx(vi.type["elem_type"])
            entry["shape"] = vi.type["shape"]
        structured.append(entry)
    return text, structured


# every pattern above starts with one of these (a cheap test for the many ordinary names)
_GENERATED_PREFIXES = ("onnx::", "onnx__", "val_", "Constant_")


def generated_name_kind(name: str) -> str | None:
    """Which exporter-generated naming pattern ``name`` follows (``"val_<N>"``...), or None."""
    if not name.startswith(_GENERATED_PREFIXES):
        return None
    for label, pattern, _meaning in GENERATED_NAMES:
        if pattern.match(name):
            return label
    return None


def _typed_nbytes(t: pb.Tensor, dtype: str, numel: int) -> int:
    size = dtypes.itemsize(dtype)
    if size is not None:
        return numel * size
    bits = {"int4": 4, "uint4": 4, "float4_e2m1": 4}.get(dtype)
    return (numel * bits + 7) // 8 if bits else 0


class _Reader:
    """Turns a parsed Model into TensorInfos, checking external data against the folder."""

    def __init__(self, src: Source, model_path: Path, model: pb.Model):
        self.src = src
        self.model_path = model_path
        self.model = model
        self.warnings: list[str] = []
        self.external_files: set[str] = set()
        self.missing_files: set[str] = set()
        self._ext_sizes: dict[str, int | None] = {}
        # the model file as TensorInfo.file: relative to the folder the user named
        self.embedded_file = model_path.name if src.is_dir else None

    def _external_size(self, location: str) -> int | None:
        if location not in self._ext_sizes:
            path = self.src.child(location)  # raises UnsafeFile when it escapes the folder
            if not path.exists():
                self._ext_sizes[location] = None
            elif not path.is_file():
                raise CorruptFile(self.model_path, f"external data {location!r} is not a file")
            else:
                self._ext_sizes[location] = path.stat().st_size
        return self._ext_sizes[location]

    def tensor_info(self, t: pb.Tensor, where: dict[str, str]) -> TensorInfo:
        dtype = dtypes.from_onnx(t.data_type)
        if t.dims and min(t.dims) < 0:
            raise CorruptFile(
                self.model_path, f"tensor {where['name']!r} has negative dims {t.dims}"
            )
        shape = tuple(t.dims)
        numel = math.prod(shape)
        extra: dict[str, Any] = {"source": where["source"]}
        if where["graph"]:
            extra["graph"] = where["graph"].rstrip("/")
        if t.name and t.name != where["name"]:
            extra["tensor_name"] = t.name
        kind = generated_name_kind(where["name"]) or (
            generated_name_kind(t.name) if t.name else None
        )
        if kind:
            extra["generated_name"] = kind
        if t.is_external:
            return self._external_info(t, where["name"], dtype, shape, numel, extra)
        if t.raw is not None:
            nbytes = t.raw[1] - t.raw[0]
            expected = _typed_nbytes(t, dtype, numel)
            if expected and nbytes != expected:
                self.warnings.append(
                    f"tensor {where['name']!r}: raw_data has {nbytes} bytes, "
                    f"{dtype}{list(shape)} needs {expected}"
                )
            extra["storage"] = "raw_data"
            return TensorInfo(
                where["name"],
                dtype,
                shape,
                nbytes,
                data_offset=t.raw[0],
                file=self.embedded_file,
                extra=extra,
            )
        if t.string_count:
            extra["storage"] = "string_data"
            return TensorInfo(where["name"], dtype, shape, t.string_bytes, extra=extra)
        fields = [pb.TYPED_FIELD_NAMES[f] for f in t.typed]
        extra["storage"] = fields[0] if fields else "empty"
        return TensorInfo(where["name"], dtype, shape, _typed_nbytes(t, dtype, numel), extra=extra)

    def _external_info(self, t, name, dtype, shape, numel, extra) -> TensorInfo:
        location = t.external.get("location", "")
        if not location:
            raise CorruptFile(self.model_path, f"tensor {name!r} is external but names no location")
        try:
            offset = int(t.external.get("offset", 0) or 0)
            length = (
                int(t.external["length"])
                if t.external.get("length")
                else _typed_nbytes(t, dtype, numel)
            )
        except ValueError:
            raise CorruptFile(
                self.model_path,
                f"tensor {name!r}: external offset/length {t.external!r} are not integers",
            ) from None
        if offset < 0 or length < 0:
            raise CorruptFile(self.model_path, f"tensor {name!r}: negative external offset/length")
        size = self._external_size(location)
        self.external_files.add(location)
        if size is None:
            self.missing_files.add(location)
        elif offset + length > size:
            raise CorruptFile(
                self.model_path,
                f"tensor {name!r}: external range "
                f"[{offset}, {offset + length}) lies beyond the end of "
                f"{location!r} ({size} bytes)",
            )
        extra["storage"] = "external"
        return TensorInfo(
            name, dtype, shape, length, data_offset=offset, file=location, extra=extra
        )


def _graph_summary(parsed: Parsed, infos: list[TensorInfo], reader: _Reader) -> dict[str, Any]:
    model = parsed.model
    inputs, inputs_detail = _value_infos(parsed.inputs, parsed.init_names)
    outputs, outputs_detail = _value_infos(parsed.outputs, set())
    initializer_infos = [
        i for i in infos if i.extra.get("source") == "initializer" and "graph" not in i.extra
    ]
    return {
        "ir_version": model.ir_version,
        "opset_import": {(domain or "ai.onnx"): version for domain, version in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "domain": model.domain or None,
        "model_version": model.model_version,
        "graph_name": parsed.graph_name,
        "inputs": inputs,
        "outputs": outputs,
        "inputs_detail": inputs_detail,
        "outputs_detail": outputs_detail,
        "n_nodes": len(parsed.op_types),
        "n_nodes_with_subgraphs": parsed.n_nodes_with_subgraphs,
        "op_types": dict(Counter(parsed.op_types).most_common()),
        "n_initializers": parsed.n_initializers,
        "n_sparse_initializers": parsed.n_sparse_initializers,
        "n_constants": sum(1 for i in infos if i.extra.get("source") == "constant"),
        # elements of Constant nodes: listed as tensors, not counted as parameters
        "constant_elements": sum(i.numel for i in infos if i.extra.get("source") == "constant"),
        "n_functions": model.n_functions,
        "initializer_bytes": sum(i.nbytes for i in initializer_infos),
        "external_data_files": sorted(reader.external_files),
        "missing_external_data_files": sorted(reader.missing_files),
        "generated_names": _generated_names(infos),
    }


def _generated_names(infos: list[TensorInfo]) -> dict[str, dict[str, Any]]:
    """{pattern: {"count", "examples", "meaning"}} for exporter-invented tensor names."""
    found: dict[str, list[str]] = {}
    for info in infos:
        kind = info.extra.get("generated_name")
        if kind:
            found.setdefault(kind, []).append(
                info.extra.get("tensor_name", info.name)
                if kind.startswith("Constant_")
                else info.name
            )
    meanings = {label: meaning for label, _p, meaning in GENERATED_NAMES}
    return {
        kind: {"count": len(names), "examples": names[:3], "meaning": meanings[kind]}
        for kind, names in found.items()
    }


def read(src: Source, match) -> ModelInfo:
    model_path = _model_file(src)
    if model_path is None:
        raise CorruptFile(src.path, "folder does not hold exactly one .onnx file")
    try:
        parsed = parse(model_path)
    except pb.ProtoError as exc:
        raise CorruptFile(
            model_path, f"{exc.reason} (truncated or not ONNX)", offset=exc.offset
        ) from None
    model = parsed.model
    reader = _Reader(src, model_path, model)
    infos: list[TensorInfo] = []
    tensors: dict[tuple[str, str | None], pb.Tensor] = {}
    for t, where in parsed.tensors:
        info = reader.tensor_info(t, where)
        infos.append(info)
        tensors[(info.name, info.extra.get("graph"))] = t
    graph = _graph_summary(parsed, infos, reader)
    warnings = list(reader.warnings)
    if graph["missing_external_data_files"]:
        warnings.append(
            "external data files missing from the model's folder: "
            + ", ".join(graph["missing_external_data_files"])
        )
    metadata: dict[str, Any] = dict(model.metadata_props)
    if model.doc_string:
        metadata.setdefault("doc_string", model.doc_string[:500])
    variant = "external-data" if graph["external_data_files"] else "embedded"
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        variant=variant,
        format_version=f"ir{model.ir_version}" if model.ir_version else None,
        tensors=infos,
        metadata=metadata,
        graph=graph,
        warnings=warnings,
        tensor_loader=loader_for(src, model_path, tensors),
    )


# ---- loading tensor data ------------------------------------------------------------------------


def loader_for(
    src: Source, model_path: Path, tensors: dict[tuple[str, str | None], pb.Tensor]
) -> Callable[[TensorInfo], np.ndarray]:
    """A function returning one tensor's data as a row-major numpy array.

    Raises (from the returned function):
        InvalidRequest: 4-bit/segmented tensors.  UnsafeFile: external data outside the folder.
        CorruptFile: missing or short external data.
    """

    def load(info: TensorInfo) -> np.ndarray:
        t = tensors[(info.name, info.extra.get("graph"))]
        if t.has_segment:
            raise InvalidRequest(
                f"{model_path}: tensor {info.name!r} is segmented; "
                f"keishiki cannot load segmented tensors"
            )
        if info.dtype == "string":
            return _load_strings(model_path, t, info)
        try:
            dtype = dtypes.to_numpy(info.dtype)
        except (KeyError, TypeError):
            raise InvalidRequest(
                f"{model_path}: tensor {info.name!r} has type {info.dtype}, "
                f"which keishiki cannot load as numpy"
            ) from None
        if t.is_external:
            data = _read_external(src, model_path, info)
        elif t.raw is not None:
            data = _read_range(model_path, t.raw[0], t.raw[1] - t.raw[0])
        else:
            try:
                return _load_typed(model_path, t, info, dtype)
            except pb.ProtoError as exc:
                raise CorruptFile(
                    model_path, f"tensor {info.name!r}: {exc.reason}", offset=exc.offset
                ) from None
            except (ValueError, OverflowError) as exc:  # values that do not fit the type
                raise CorruptFile(model_path, f"tensor {info.name!r}: {exc}") from None
        if info.numel == 0:
            return np.zeros(info.shape, dtype=dtype)
        if len(data) != info.numel * dtype.itemsize:
            raise CorruptFile(
                model_path,
                f"tensor {info.name!r}: {len(data)} bytes of data "
                f"for {info.dtype}{list(info.shape)}",
            )
        arr = np.frombuffer(data, dtype=dtype).reshape(info.shape).copy()
        # ONNX stores little-endian bytes whatever the writer's machine
        return arr if sys.byteorder == "little" else arr.byteswap()

    return load


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise CorruptFile(path, f"short read: {len(data)} of {length} bytes", offset=offset)
    return data


def _read_external(src: Source, model_path: Path, info: TensorInfo) -> bytes:
    assert info.file is not None and info.data_offset is not None
    path = src.child(info.file)
    if not path.is_file():
        raise CorruptFile(model_path, f"external data file {info.file!r} is missing")
    return _read_range(path, info.data_offset, info.nbytes)


def _load_strings(model_path: Path, t: pb.Tensor, info: TensorInfo) -> np.ndarray:
    with open(model_path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        values = [_utf8_or_bytes(bytes(buf[a:b])) for a, b in t.string_spans]
    if len(values) != info.numel:
        raise CorruptFile(
            model_path, f"tensor {info.name!r}: {len(values)} strings for shape {list(info.shape)}"
        )
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr.reshape(info.shape)


def _utf8_or_bytes(data: bytes) -> str | bytes:
    """Strings as onnx.numpy_helper returns them (UTF-8 text), raw bytes when not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _load_typed(model_path: Path, t: pb.Tensor, info: TensorInfo, dtype: np.dtype) -> np.ndarray:
    """Data held in float_data/int32_data/int64_data/double_data/uint64_data."""
    if not t.typed:
        if info.numel:
            raise CorruptFile(
                model_path, f"tensor {info.name!r} holds no data for {info.numel} elements"
            )
        return np.zeros(info.shape, dtype=dtype)
    number, stored = next(iter(t.typed.items()))
    if isinstance(stored, list):  # unpacked scalars (old writers)
        if number in (4, 10):
            fmt = "<f4" if number == 4 else "<f8"
            values = np.array([v for v, _w in stored], dtype="<u4" if number == 4 else "<u8").view(
                fmt
            )
        else:
            values = np.array([v for v, _w in stored], dtype=np.int64)
    else:
        with (
            open(model_path, "rb") as fh,
            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf,
        ):
            if number in (4, 10):
                values = np.frombuffer(
                    bytes(buf[stored[0] : stored[1]]), dtype="<f4" if number == 4 else "<f8"
                )
            else:
                values = np.array(pb.unpack_varints(buf, stored), dtype=np.int64)
    native = dtype
    if info.dtype in ("complex64", "complex128"):
        values = values.view(native)
    elif info.dtype in ("float16", "bfloat16") or info.dtype.startswith("float8"):
        # 16- and 8-bit floats travel as their bit patterns in int32_data
        bits = np.uint16 if native.itemsize == 2 else np.uint8
        values = values.astype(bits).view(native)
    elif number == 11 and info.dtype == "uint64":
        values = values.astype(np.uint64)  # two's complement wrap back to unsigned
    else:
        values = values.astype(native)
    if values.size != info.numel:
        raise CorruptFile(
            model_path,
            f"tensor {info.name!r}: {values.size} values for {info.dtype}{list(info.shape)}",
        )
    return values.reshape(info.shape)
