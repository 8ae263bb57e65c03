"""GGUF (llama.cpp): magic, version, typed key/value metadata, tensor infos, aligned data.

keishiki reads the header itself over a read-only ``mmap`` (the ``gguf`` package's
``GGUFReader`` builds a numpy view of every tensor, which is slower and not needed for
``info``).  Every count and length is checked against the bytes left in the file before
it is used, so a tensor count of 2^40 or a string length of 2^60 fails at once with
:class:`CorruptFile` instead of allocating.

GGUF stores dims fastest-first (ne[0] is the row length); :class:`TensorInfo` shapes are
row-major (PyTorch order), so they are reversed here and the GGUF order is kept in
``extra["gguf_shape"]``.  Block-quantized tensors load as their raw ``uint8`` blocks, shaped
as ``GGUFReader`` shapes them (rows × bytes per row).

A split model (``NAME-00001-of-0000N.gguf``..., see :mod:`.gguf_split`) is read as one model
from any of its splits or from its folder: every split's tensors, the first split's metadata.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from . import gguf_split
from .registry import Match

FORMAT = "gguf"
MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses more
ARRAY_KEEP = 8  # arrays up to this length are shown whole in ``info``
ARRAY_FIRST = 5  # longer ones are summarised with their first items

# ggml_type id -> (name, elements per block, bytes per block); gguf.constants.GGML_QUANT_SIZES
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}
_TYPE_IDS = {name: type_id for type_id, (name, _b, _s) in GGML_TYPES.items()}
# plain element types keep numpy/torch names; quantized ones their lower-case GGML names
PLAIN_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}

# GGUF metadata value types: id -> (name, struct code or None for string/array)
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "B"),
    1: ("int8", "b"),
    2: ("uint16", "H"),
    3: ("int16", "h"),
    4: ("uint32", "I"),
    5: ("int32", "i"),
    6: ("float32", "f"),
    7: ("bool", "?"),
    8: ("string", None),
    9: ("array", None),
    10: ("uint64", "Q"),
    11: ("int64", "q"),
    12: ("float64", "d"),
}
STRING, ARRAY = 8, 9


def ggml_dtype(type_id: int) -> str:
    """GGML type id -> keishiki dtype (``float16``, ``q4_0``, ``q6_k``...)."""
    name = GGML_TYPES[type_id][0]
    return PLAIN_DTYPES.get(name, name.lower())


def sniff(src: Source) -> Match | None:
    if src.is_dir:  # a folder of GGUF files (one model, perhaps split): read() picks the file
        found = gguf_split.gguf_files(src)
        return (
            Match(FORMAT, None, reason=f"folder holding {len(found)} GGUF file(s)")
            if found
            else None
        )
    head = src.head
    if len(head) < 24 or head[:4] != MAGIC:
        return None
    return Match(FORMAT, None, reason="magic 'GGUF'")


# ---- header parsing -----------------------------------------------------------------------------


@dataclass
class Header:
    """What a GGUF header says, with tensor offsets made absolute."""

    version: int
    byte_order: str  # "<" or ">"
    kv: dict[str, Any] = field(default_factory=dict)  # summarised values
    kv_types: dict[str, str] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0
    tensor_count: int = 0
    kv_count: int = 0


class _Cursor:
    """Sequential bounded reads over the mapped file."""

    def __init__(self, buf: Any, size: int, path: Path, order: str):
        self.buf, self.size, self.path, self.order = buf, size, path, order
        self.pos = 0

    def fail(self, reason: str, offset: int | None = None):
        raise CorruptFile(self.path, reason, offset=self.pos if offset is None else offset)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            self.fail(
                f"{what} needs {n} bytes but only {self.size - self.pos} remain "
                f"(truncated or corrupt)"
            )

    def scalar(self, code: str, what: str) -> Any:
        n = struct.calcsize(code)
        self.need(n, what)
        (value,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, keep: bool = True) -> str | None:
        length = self.scalar("Q", f"{what} length")
        self.need(length, f"{what} of length {length}")
        start = self.pos
        self.pos += length
        if not keep:
            return None
        return bytes(self.buf[start : self.pos]).decode("utf-8", "replace")


def _read_value(cur: _Cursor, vtype: int, key: str, full_arrays: bool) -> Any:
    if vtype not in VALUE_TYPES:
        cur.fail(f"key {key!r}: unknown value type {vtype}")
    name, code = VALUE_TYPES[vtype]
    if code is not None:
        return cur.scalar(code, f"value of {key!r}")
    if vtype == STRING:
        return cur.string(f"string value of {key!r}")
    item_type = cur.scalar("I", f"array type of {key!r}")
    count = cur.scalar("Q", f"array length of {key!r}")
    if item_type not in VALUE_TYPES or item_type == ARRAY:
        cur.fail(f"key {key!r}: unsupported array item type {item_type}")
    item_name, item_code = VALUE_TYPES[item_type]
    # the smallest encoding of one item bounds the count before any loop or allocation
    min_item = 8 if item_type == STRING else struct.calcsize(item_code)
    cur.need(count * min_item, f"array {key!r} of {count} {item_name} items")
    keep = count if (full_arrays or count <= ARRAY_KEEP) else ARRAY_FIRST
    if item_type == STRING:
        items = _skim_strings(cur, count, keep, key)
    else:
        width = struct.calcsize(item_code)
        items = list(struct.unpack_from(f"{cur.order}{keep}{item_code}", cur.buf, cur.pos))
        cur.pos += count * width
    if count <= ARRAY_KEEP or full_arrays:
        return items
    return {"type": item_name, "length": count, "first": items}


def _skim_strings(cur: _Cursor, count: int, keep: int, key: str) -> list[str]:
    """Walk a string array (vocabularies: 100k+ items), decoding only the first ``keep``."""
    length_at = struct.Struct(cur.order + "Q").unpack_from
    buf, size, pos = cur.buf, cur.size, cur.pos
    items: list[str] = []
    for i in range(count):
        if pos + 8 > size:
            cur.pos = pos
            cur.fail(f"array {key!r} is cut off at item {i} of {count}")
        (n,) = length_at(buf, pos)
        pos += 8 + n
        if pos > size:
            cur.pos = pos - n
            cur.fail(f"item {i} of array {key!r} claims {n} bytes beyond the end of the file")
        if i < keep:
            items.append(bytes(buf[pos - n : pos]).decode("utf-8", "replace"))
    cur.pos = pos
    return items


def read_header(src: Source, full_arrays: bool = False) -> Header:
    """Parse the header of a GGUF file (metadata and tensor infos, never tensor data).

    Args:
        src: the file.
        full_arrays: keep long arrays (vocabularies) whole instead of summarising them.

    Raises:
        CorruptFile: bad magic, version 1 or unknown, truncated, absurd counts or offsets.
    """
    size = src.size
    if size < 24:
        raise CorruptFile(src.path, f"{size} bytes is shorter than a GGUF header", offset=0)
    with open(src.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse(buf, size, src.path, full_arrays)


def _parse(buf: Any, size: int, path: Path, full_arrays: bool) -> Header:
    if bytes(buf[:4]) != MAGIC:
        raise CorruptFile(path, "missing 'GGUF' magic", offset=0)
    (version,) = struct.unpack_from("<I", buf, 4)
    order = "<"
    if version & 0xFFFF == 0 and version >> 16:  # a big-endian file (s390x builds)
        order, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version == 1:
        raise CorruptFile(
            path,
            "GGUF version 1 is unsupported (32-bit counts, pre-2023 "
            "llama.cpp): re-convert the model with a current llama.cpp",
            offset=4,
        )
    if version not in (2, 3):
        raise CorruptFile(
            path, f"unknown GGUF version {version} (keishiki reads 2 and 3)", offset=4
        )
    cur = _Cursor(buf, size, path, order)
    cur.pos = 8
    tensor_count = cur.scalar("Q", "tensor count")
    kv_count = cur.scalar("Q", "metadata key count")
    # each key/value takes >= 13 bytes and each tensor info >= 28: refuse impossible counts
    if kv_count * 13 > size - cur.pos or tensor_count * 28 > size - cur.pos:
        cur.fail(
            f"{tensor_count} tensors and {kv_count} metadata keys cannot fit in a {size}-byte file",
            offset=8,
        )
    header = Header(version=version, byte_order=order, tensor_count=tensor_count, kv_count=kv_count)
    for _ in range(kv_count):
        at = cur.pos
        key = cur.string("metadata key")
        if key in header.kv:  # llama.cpp and gguf-py refuse the file; which would count?
            cur.fail(f"metadata key {key!r} given twice", offset=at)
        vtype = cur.scalar("I", f"value type of {key!r}")
        header.kv[key] = _read_value(cur, vtype, key, full_arrays)
        header.kv_types[key] = VALUE_TYPES[vtype][0]
    alignment = header.kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        cur.fail(f"general.alignment {alignment!r} is not a power of two")
    header.alignment = alignment
    raw = [_read_tensor_info(cur) for _ in range(tensor_count)]
    if len({entry[0] for entry in raw}) != len(raw):  # (as llama.cpp, gguf-py: refused)
        seen: set[str] = set()
        twice = next(entry[0] for entry in raw if entry[0] in seen or seen.add(entry[0]))
        cur.fail(f"tensor {twice!r} given twice")
    header.data_offset = cur.pos + (-cur.pos % alignment)
    header.tensors = [_tensor_info(cur, header, *entry) for entry in raw]
    return header


def _read_tensor_info(cur: _Cursor) -> tuple[str, list[int], int, int]:
    name = cur.string("tensor name")
    n_dims = cur.scalar("I", f"dim count of {name!r}")
    if n_dims > MAX_DIMS:
        cur.fail(f"tensor {name!r} has {n_dims} dims (GGML allows {MAX_DIMS})")
    dims = [cur.scalar("Q", f"dims of {name!r}") for _ in range(n_dims)]
    type_id = cur.scalar("I", f"type of {name!r}")
    offset = cur.scalar("Q", f"offset of {name!r}")
    return name, dims, type_id, offset


def _tensor_info(
    cur: _Cursor, header: Header, name: str, dims: list[int], type_id: int, offset: int
) -> TensorInfo:
    if type_id not in GGML_TYPES:
        cur.fail(f"tensor {name!r} has unknown ggml type {type_id}")
    type_name, block, block_bytes = GGML_TYPES[type_id]
    numel = math.prod(dims)
    row = dims[0] if dims else 1  # (a 0-dim tensor is one value: one row of one)
    if row % block:
        cur.fail(
            f"tensor {name!r}: row length {row} is not a multiple of the "
            f"{type_name} block size {block}"
        )
    nbytes = numel // block * block_bytes
    start = header.data_offset + offset
    if offset % header.alignment or start + nbytes > cur.size:
        cur.fail(
            f"tensor {name!r}: data at offset {offset} ({nbytes} bytes) is misaligned "
            f"or beyond the end of the file",
            offset=start,
        )
    return TensorInfo(
        name,
        ggml_dtype(type_id),
        tuple(reversed(dims)),
        nbytes,
        data_offset=start,
        extra={"ggml_type": type_name, "gguf_shape": list(dims)},
    )


# ---- ModelInfo ----------------------------------------------------------------------------------


def read(src: Source, match) -> ModelInfo:
    """The model at ``src`` (a GGUF file, any split of a split model, or a folder holding
    one model): every split's tensors, the metadata of the first split."""
    if src.is_dir:
        with Source(gguf_split.model_file(src)) as inner:
            return read(inner, match)
    parts = gguf_split.open_set(src.path, read_header(src))
    header = parts.headers[0]  # the first split holds the model's metadata
    kv = header.kv
    tokens = kv.get("tokenizer.ggml.tokens")
    n_vocab = (
        tokens["length"]
        if isinstance(tokens, dict)
        else (len(tokens) if isinstance(tokens, list) else None)
    )
    tensors = _all_tensors(parts)
    gguf = {
        "version": header.version,
        "architecture": kv.get("general.architecture"),
        "tensor_count": len(tensors),
        "kv_count": header.kv_count,
        "alignment": header.alignment,
        "tensor_data_offset": header.data_offset,
        "byte_order": "little" if header.byte_order == "<" else "big",
        "n_vocab_tokens": n_vocab,
        "ggml_types": _type_histogram(tensors),
        "kv": kv,
        "kv_types": header.kv_types,
    }
    if parts.count > 1:
        gguf["splits"] = {
            "count": parts.count,
            "files": parts.names,
            "n_tensors": [len(h.tensors) for h in parts.headers],
            "bytes": sum(p.stat().st_size for p in parts.paths),
        }
    metadata = {
        k: v for k, v in kv.items() if k.startswith("general.") and not isinstance(v, (dict, list))
    }
    warnings = []
    if not tensors:
        warnings.append("no tensors: a vocabulary-only GGUF (convert_hf_to_gguf --vocab-only)")
    named = gguf_split.parse_name(src.path.name)
    if parts.count == 1 and named and named[2] > 1:
        warnings.append(
            f"named like split {named[1]} of {named[2]} but has no split.* keys: "
            f"read as a whole model on its own"
        )
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        format_version=str(header.version),
        variant="split" if parts.count > 1 else None,
        tensors=tensors,
        metadata=metadata,
        gguf=gguf,
        warnings=warnings,
        tensor_loader=loader_for(src.path, header.byte_order),
        file_size=gguf["splits"]["bytes"] if parts.count > 1 else 0,
    )


def _all_tensors(parts: gguf_split.SplitSet) -> list[TensorInfo]:
    """Every split's tensors in split order; a split's tensors name their file."""
    if parts.count == 1:
        return parts.headers[0].tensors
    # the loader reads each from the split its ``file`` names, beside the named one
    return [
        replace(t, file=name)
        for name, header in zip(parts.names, parts.headers)
        for t in header.tensors
    ]


def _type_histogram(tensors: list[TensorInfo]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tensors:
        out[t.extra["ggml_type"]] = out.get(t.extra["ggml_type"], 0) + 1
    return out


def loader_for(path: Path, byte_order: str = "<") -> Callable[[TensorInfo], np.ndarray]:
    """A function reading one tensor: plain types as their dtype in row-major shape,
    quantized types as raw uint8 blocks shaped (rows..., bytes per row) like GGUFReader.
    A split model's tensors are read from the split their ``file`` names, beside ``path``."""
    from ..core import dtypes
    from ..core.gate import inside

    def load(info: TensorInfo) -> np.ndarray:
        where = inside(path.parent, info.file) if info.file else path
        mm = (
            np.memmap(
                where, dtype=np.uint8, mode="r", offset=info.data_offset, shape=(info.nbytes,)
            )
            if info.nbytes
            else np.zeros(0, np.uint8)
        )
        data = np.array(mm)
        _name, block, block_bytes = GGML_TYPES[_TYPE_IDS[info.extra["ggml_type"]]]
        if block > 1:
            gshape = info.extra["gguf_shape"]
            row_bytes = gshape[0] // block * block_bytes if gshape else block_bytes
            return data.reshape(tuple(reversed(gshape[1:])) + (row_bytes,))
        arr = data.view(dtypes.to_numpy(info.dtype)).reshape(info.shape)
        # a big-endian GGUF (s390x builds) holds its values byte-swapped
        return arr.byteswap() if byte_order == ">" else arr

    return load
