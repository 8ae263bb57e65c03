"""flax-msgpack: ``flax.serialization.to_bytes`` state (a msgpack map of nested maps).

Leaves are msgpack ext types (flax ``_MsgpackExtType``): 1 = ndarray, whose payload is
itself msgpack ``[shape, dtype name, raw bytes]``; 2 = native complex ``[re, im]``;
3 = numpy scalar ``[dtype name, raw bytes]``.  Arrays over flax's chunk size are written as
``{"__msgpack_chunked_array__": true, "shape": ..., "chunks": {"0": ndarray, ...}}``.

keishiki walks the msgpack structure itself over a memory map, recording each array's
shape, dtype and the offset of its bytes without touching them, so ``info`` costs the
same for a 1 kB and a 10 GB file.  Names join the map keys with ``/`` as flax's
``traverse_util.flatten_dict(sep="/")`` does (``params/dense1/kernel``).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from typing import Any

from ..core import dtypes
from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from .registry import Match

FORMAT = "flax-msgpack"
MAX_DEPTH = 100
MAX_ITEMS = 10_000_000
CHUNKED = "__msgpack_chunked_array__"


class _Short(Exception):
    """Ran out of bytes."""


class _Bad(Exception):
    """Not valid msgpack (or not flax's use of it)."""


@dataclass
class Bin:
    offset: int
    length: int


@dataclass
class Array:
    """An ext-1 ndarray (or ext-3 scalar) leaf: where its bytes are, not the bytes."""

    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


@dataclass
class Complex:
    value: complex


# fixed-size headers: marker -> (struct format, kind)
_FIXED = {
    0xCC: (">B", "int"),
    0xCD: (">H", "int"),
    0xCE: (">I", "int"),
    0xCF: (">Q", "int"),
    0xD0: (">b", "int"),
    0xD1: (">h", "int"),
    0xD2: (">i", "int"),
    0xD3: (">q", "int"),
    0xCA: (">f", "float"),
    0xCB: (">d", "float"),
}
_LEN = {
    0xC4: (">B", "bin"),
    0xC5: (">H", "bin"),
    0xC6: (">I", "bin"),
    0xD9: (">B", "str"),
    0xDA: (">H", "str"),
    0xDB: (">I", "str"),
    0xDC: (">H", "array"),
    0xDD: (">I", "array"),
    0xDE: (">H", "map"),
    0xDF: (">I", "map"),
    0xC7: (">B", "ext"),
    0xC8: (">H", "ext"),
    0xC9: (">I", "ext"),
}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}


class _Reader:
    """msgpack values from a buffer; bin payloads are located (Bin), never copied."""

    def __init__(self, buf: Any, size: int):
        self.buf, self.size, self.items = buf, size, 0
        self.n_arrays = 0  # ndarray leaves seen so far (the sniffer's evidence)

    def _take(self, pos: int, n: int) -> bytes:
        if pos + n > len(self.buf) or n < 0:
            raise _Short(pos)
        return bytes(self.buf[pos : pos + n])

    def _unpack(self, fmt: str, pos: int) -> tuple[Any, int]:
        n = struct.calcsize(fmt)
        return struct.unpack(fmt, self._take(pos, n))[0], pos + n

    def value(self, pos: int, depth: int = 0) -> tuple[Any, int]:
        self.items += 1
        if depth > MAX_DEPTH or self.items > MAX_ITEMS:
            raise _Bad("nesting or item count beyond limits")
        b = self._take(pos, 1)[0]
        pos += 1
        if b <= 0x7F:
            return b, pos
        if b >= 0xE0:
            return b - 0x100, pos
        if 0x80 <= b <= 0x8F:
            return self._map(pos, b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self._array(pos, b & 0x0F, depth)
        if 0xA0 <= b <= 0xBF:
            return self._str(pos, b & 0x1F)
        if b in (0xC0, 0xC2, 0xC3):
            return {0xC0: None, 0xC2: False, 0xC3: True}[b], pos
        if b in _FIXED:
            return self._unpack(_FIXED[b][0], pos)
        if b in _FIXEXT:
            return self._ext(pos, _FIXEXT[b], depth)
        if b in _LEN:
            fmt, kind = _LEN[b]
            n, pos = self._unpack(fmt, pos)
            if kind == "bin":
                if pos + n > self.size:
                    raise _Short(pos)
                return Bin(pos, n), pos + n
            if kind == "str":
                return self._str(pos, n)
            if kind == "array":
                return self._array(pos, n, depth)
            if kind == "map":
                return self._map(pos, n, depth)
            return self._ext(pos, n, depth)
        raise _Bad(f"invalid msgpack marker 0x{b:02x} at byte {pos - 1}")

    def _str(self, pos: int, n: int) -> tuple[str, int]:
        return self._take(pos, n).decode("utf-8", errors="replace"), pos + n

    def _array(self, pos: int, n: int, depth: int) -> tuple[list, int]:
        if n > self.size - pos:
            raise _Bad(f"array of {n} items cannot fit in the file")
        out = []
        for _ in range(n):
            v, pos = self.value(pos, depth + 1)
            out.append(v)
        return out, pos

    def _map(self, pos: int, n: int, depth: int) -> tuple[dict, int]:
        if 2 * n > self.size - pos:
            raise _Bad(f"map of {n} entries cannot fit in the file")
        out: dict = {}
        for _ in range(n):
            k, pos = self.value(pos, depth + 1)
            if isinstance(k, (dict, list, Bin, Array, Complex)):
                raise _Bad("map key is not a scalar")
            out[k], pos = self.value(pos, depth + 1)
        return out, pos

    def _ext(self, pos: int, n: int, depth: int) -> tuple[Any, int]:
        code, pos = self._unpack(">b", pos)
        end = pos + n
        if end > self.size:
            raise _Short(pos)
        if code == 1:  # ndarray: [shape, dtype name, bytes]
            inner, inner_end = self.value(pos, depth + 1)
            if inner_end != end or not (
                isinstance(inner, list) and len(inner) == 3 and isinstance(inner[2], Bin)
            ):
                raise _Bad("ext 1 payload is not [shape, dtype, bytes]")
            return self._array_leaf(inner[0], inner[1], inner[2]), end
        if code == 3:  # numpy scalar: [dtype name, bytes]
            inner, inner_end = self.value(pos, depth + 1)
            if inner_end != end or not (
                isinstance(inner, list) and len(inner) == 2 and isinstance(inner[1], Bin)
            ):
                raise _Bad("ext 3 payload is not [dtype, bytes]")
            return self._array_leaf([], inner[0], inner[1]), end
        if code == 2:  # native complex: [real, imag]
            inner, inner_end = self.value(pos, depth + 1)
            if inner_end != end or not (
                isinstance(inner, list)
                and len(inner) == 2
                and all(isinstance(x, (int, float)) for x in inner)
            ):
                raise _Bad("ext 2 payload is not [real, imag]")
            return Complex(complex(inner[0], inner[1])), end
        raise _Bad(f"unknown msgpack ext type {code}")

    def _array_leaf(self, shape: Any, dtype: Any, data: Bin) -> Array:
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _Bad(f"bad ndarray shape {shape!r:.60}")
        size = dtypes.itemsize(str(dtype))
        if size is None:
            raise _Bad(f"unknown ndarray dtype {dtype!r:.40}")
        if math.prod(shape) * size != data.length:
            raise _Bad(
                f"{dtype}{shape} needs {math.prod(shape) * size} bytes, "
                f"the leaf holds {data.length}"
            )
        self.n_arrays += 1
        return Array(tuple(shape), str(dtype), data.offset, data.length)


def _has_array(value: Any, depth: int = 0) -> bool:
    if isinstance(value, Array):
        return True
    if isinstance(value, dict) and depth < MAX_DEPTH:
        return any(_has_array(v, depth + 1) for v in value.values())
    return False


def sniff(src: Source) -> Match | None:
    head = src.head
    if src.is_dir or len(head) < 6 or not (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return None  # (6 bytes: a map32 header is 5 bytes before its first key)
    first_key = head[1] if head[0] <= 0x8F else head[3 if head[0] == 0xDE else 5]
    if not (0xA0 <= first_key <= 0xBF or first_key in (0xD9, 0xDA, 0xDB)):
        return None  # flax state maps are keyed by strings
    reader = _Reader(head, src.size)
    try:
        value, end = reader.value(0)
        ok = _has_array(value) and end == src.size
    except _Short:  # the head ends mid-map: enough when a valid ndarray leaf came first
        ok = reader.n_arrays > 0 and len(head) < src.size
    except (_Bad, RecursionError, struct.error, ValueError, OverflowError):
        ok = False
    return Match(FORMAT, None, reason="msgpack map with ndarray ext leaves") if ok else None


def _flatten(value: Any, prefix: str, out: list[tuple[str, Any]], depth: int = 0) -> None:
    if isinstance(value, dict) and value.get(CHUNKED) is True:
        out.append((prefix, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}/{k}" if prefix else str(k), out, depth + 1)
    elif isinstance(value, (Array, Complex)):
        out.append((prefix, value))


def _info(src: Source, name: str, leaf: Any) -> TensorInfo:
    if isinstance(leaf, Array):
        return TensorInfo(name, leaf.dtype, leaf.shape, leaf.nbytes, data_offset=leaf.offset)
    if isinstance(leaf, Complex):
        return TensorInfo(name, "complex128", (), 16)
    shape, chunks = leaf.get("shape"), leaf.get("chunks")
    if not (
        isinstance(shape, list)
        and isinstance(chunks, dict)
        and all(isinstance(c, Array) for c in chunks.values())
        and chunks
    ):
        raise CorruptFile(src.path, f"{name}: malformed chunked array")
    dtype = next(iter(chunks.values())).dtype
    nbytes = sum(c.nbytes for c in chunks.values())
    if math.prod(shape) * (dtypes.itemsize(dtype) or 0) != nbytes:
        raise CorruptFile(
            src.path, f"{name}: chunks hold {nbytes} bytes, shape {shape} of {dtype} needs more"
        )
    return TensorInfo(name, dtype, tuple(shape), nbytes, extra={"chunks": len(chunks)})


def _loader(src: Source, leaves: dict[str, Any]):
    path = src.path

    def raw(arr: Array) -> np.ndarray:
        np_dtype = dtypes.to_numpy(arr.dtype)
        if arr.nbytes == 0:
            return np.zeros(arr.shape, np_dtype)
        mm = np.memmap(path, np.uint8, "r", offset=arr.offset, shape=(arr.nbytes,))
        return np.array(mm).view(np_dtype).reshape(arr.shape)

    def load(info: TensorInfo) -> np.ndarray:
        leaf = leaves[info.name]
        if isinstance(leaf, Array):
            return raw(leaf)
        if isinstance(leaf, Complex):
            return np.array(leaf.value, np.complex128)
        chunks = [
            raw(leaf["chunks"][k]).reshape(-1)
            for k in sorted(leaf["chunks"], key=lambda k: int(k) if str(k).isdigit() else 0)
        ]
        return np.concatenate(chunks).reshape(info.shape)

    return load


def read(src: Source, match) -> ModelInfo:
    if src.size == 0:
        raise CorruptFile(src.path, "empty file")
    with open(src.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        reader = _Reader(mm, src.size)
        try:
            state, end = reader.value(0)
        except _Short as exc:
            raise CorruptFile(
                src.path, "truncated msgpack stream", offset=exc.args[0] if exc.args else None
            ) from None
        except _Bad as exc:
            raise CorruptFile(src.path, str(exc)) from None
    if not isinstance(state, dict):
        raise CorruptFile(src.path, "the top-level msgpack value is not a map")
    leaves: list[tuple[str, Any]] = []
    _flatten(state, "", leaves)
    infos = [_info(src, name, leaf) for name, leaf in leaves]
    details = {
        "top_keys": [str(k) for k in state],
        "leaf_count": len(infos),
        "trailing_bytes": src.size - end,
    }
    warnings = [f"{src.size - end} bytes after the msgpack value"] if end != src.size else []
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        tensors=infos,
        warnings=warnings,
        details={FORMAT: details},
        tensor_loader=_loader(src, dict(leaves)),
    )
