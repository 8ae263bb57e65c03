"""safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.

Reading parses only the header, and refuses exactly what the ``safetensors`` library (Rust,
0.8) refuses: serde_json's grammar (no NaN, no floats or signs where a size goes, no lone
surrogates, nesting of at most 127), a ``__metadata__`` of strings given once, dtypes from
its list, tensors that tile the data section from byte 0 with neither gap nor overlap, and
a file that ends where the last tensor does.  A file keishiki reads and the real loader
refuses (or the reverse) would let ``info``/``convert`` vouch for bytes nobody else sees.
The writer streams one tensor at a time, so converting never holds a whole model in memory;
safetensors' own ``save_file`` needs every tensor materialised at once and refuses shared
storages, which is why keishiki writes the (simple, documented) layout itself.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

from ..core import dtypes
from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import LazyTensor, TensorInfo
from ..errors import CorruptFile, InvalidRequest
from .registry import Match

FORMAT = "safetensors"
MAX_HEADER_BYTES = 100_000_000  # MAX_HEADER_SIZE of safetensors' Rust reader (not 100 MiB)
MAX_DEPTH = 127  # serde_json's recursion limit, counted as safetensors nests
U64_MAX = 2**64 - 1
# bits per element of every dtype safetensors 0.8 knows (serde refuses any other name)
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_FIELD_SET = frozenset({"dtype", "shape", "data_offsets"})
_MINUS_ZERO = re.compile(r"-0(?![0-9.eE])")  # serde reads "-0" as a float, Python as 0
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def sniff(src: Source) -> Match | None:
    head = src.head
    if src.is_dir or len(head) < 10:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > src.size:
        return None
    if head[8:].lstrip(b" \t\n\r")[:1] != b"{":  # serde skips JSON whitespace first
        return None
    return Match(FORMAT, None, reason="u64 header length followed by a JSON object")


class _Object(dict):
    """A JSON object that remembers which keys it was given more than once (serde keeps the
    last value in a map but refuses a repeated struct field), and the values the last one
    replaced (serde typed each of them as it read it: a bad one is refused all the same)."""

    repeated: frozenset = frozenset()
    replaced: tuple = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):  # rare: find which keys came twice
        seen: set[str] = set()
        obj.repeated = frozenset(k for k, _v in pairs if k in seen or seen.add(k))
        last = {k: i for i, (k, _v) in enumerate(pairs)}
        obj.replaced = tuple(p for i, p in enumerate(pairs) if last[p[0]] != i)
    return obj


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} out of range")
    return value


def _check_tree(value: Any, depth: int, strings: bool) -> None:
    """Refuse nesting deeper than serde allows (``value`` sits at ``depth``) and, when
    ``strings``, lone surrogates, which Python's json accepts and serde_json does not."""
    todo = [(value, depth)]
    while todo:
        obj, level = todo.pop()
        if isinstance(obj, (dict, list)):
            if level > MAX_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
            items = list(obj.items()) if isinstance(obj, dict) else [(None, v) for v in obj]
            for key, item in items:
                if strings and isinstance(key, str):
                    todo.append((key, level))
                todo.append((item, level + 1))
        elif strings and isinstance(obj, str):
            try:
                obj.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("header holds a lone UTF-16 surrogate escape") from None


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header JSON parsed as serde_json parses it for safetensors.

    Raises:
        ValueError: what safetensors refuses (the message says why).
    """
    try:
        text = raw.decode("utf-8")  # never the UTF-16/32 or BOM sniffing of json.loads(bytes)
    except UnicodeDecodeError as exc:
        raise ValueError(f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        hooks: dict[str, Any] = (
            {"parse_int": lambda s: -0.0 if s == "-0" else int(s)}
            if _MINUS_ZERO.search(text)
            else {}
        )
        header = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_no_constant,
            parse_float=_finite,
            **hooks,
        )
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"header is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_tree(header, 1, strings=True)
    if not isinstance(header, dict):
        raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
    if "__metadata__" in header.repeated:
        raise ValueError("__metadata__ given twice")
    return header


def _usizes(values: list, what: str) -> tuple[int, ...]:
    """``values`` as unsigned 64-bit integers, or ValueError (bool, float, "-0": not usize)."""
    for v in values:
        if type(v) is not int or not 0 <= v <= U64_MAX:
            raise ValueError(f"{what} holds {json.dumps(v)[:40]}, not an unsigned integer")
    return tuple(values)


def _entry(name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype code, shape, begin, end) of one tensor entry, typed as serde reads it: an
    object with the three fields (others ignored, a repeated one refused) or an array of
    exactly three."""
    if isinstance(entry, dict):
        try:
            code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        except KeyError as exc:
            raise ValueError(f"tensor {name!r}: field {exc.args[0]!r} missing") from None
        twice = _FIELD_SET & getattr(entry, "repeated", frozenset())
        if twice:
            raise ValueError(f"tensor {name!r}: field {sorted(twice)[0]!r} repeated")
        if len(entry) > 3:
            for key, value in entry.items():  # ignored by serde but parsed: depth counts
                if key not in _FIELD_SET and isinstance(value, (dict, list)):
                    _check_tree(value, 3, strings=False)
    elif isinstance(entry, list):
        if len(entry) != 3:
            raise ValueError(f"tensor {name!r}: array of {len(entry)} items, not 3")
        code, shape, offsets = entry
    else:
        raise ValueError(f"tensor {name!r}: entry is {type(entry).__name__}, not an object")
    if isinstance(code, dict) and len(code) == 1 and None in code.values():
        code = next(iter(code))  # serde's map form of an enum variant: {"F32": null}
    if not isinstance(code, str) or code not in DTYPE_BITS:
        raise ValueError(f"tensor {name!r}: unknown dtype {json.dumps(code)[:40]}")
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise ValueError(f"tensor {name!r}: shape must be a list and data_offsets two numbers")
    begin, end = _usizes(offsets, f"tensor {name!r}: data_offsets")
    return code, _usizes(shape, f"tensor {name!r}: shape"), begin, end


def validate(header: dict[str, Any], data_bytes: int) -> tuple[dict[str, str], list[tuple]]:
    """Check a parsed header as ``Metadata::validate`` does: (metadata, [(name, dtype code,
    shape, begin, end)] in offset order).

    Raises:
        ValueError: what safetensors refuses.
    """
    for name, earlier in getattr(header, "replaced", ()):
        if name != "__metadata__":  # (given twice: refused by parse_header)
            _entry(name, earlier)
    header = dict(header)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("__metadata__ must map strings to strings")
    entries = sorted(
        ((name, *_entry(name, e)) for name, e in header.items()), key=lambda t: (t[3], t[4])
    )
    start = 0
    for name, code, shape, begin, end in entries:
        if begin != start or end < begin:
            raise ValueError(
                f"tensor {name!r}: data_offsets [{begin}, {end}] leave a gap or "
                f"overlap (expected to start at {start})"
            )
        start = end
        n = 1
        for d in shape:  # a left fold with overflow checks, as Rust's try_fold does
            n *= d
            if n > U64_MAX:
                raise ValueError(f"tensor {name!r}: shape {list(shape)} overflows")
        bits = n * DTYPE_BITS[code]
        if bits > U64_MAX or bits % 8:
            raise ValueError(f"tensor {name!r}: {code}{list(shape)} is not a whole number of bytes")
        if bits // 8 != end - begin:
            raise ValueError(
                f"tensor {name!r}: {code}{list(shape)} needs {bits // 8} bytes, "
                f"data_offsets give {end - begin}"
            )
    if start > data_bytes:
        raise ValueError(
            f"tensors end at byte {start} of the data section, outside the file "
            f"({data_bytes} bytes of data)"
        )
    if start != data_bytes:
        raise ValueError(
            f"tensors cover {start} bytes of a {data_bytes}-byte data section "
            f"(safetensors refuses a file not fully covered)"
        )
    return dict(metadata), entries


def read_header(src: Source) -> tuple[int, dict[str, Any]]:
    """(header length, parsed header), parsed as safetensors parses it."""
    if src.size < 8:
        raise CorruptFile(src.path, "shorter than the 8-byte header length", offset=0)
    (n,) = struct.unpack("<Q", src.peek(8))
    if n > MAX_HEADER_BYTES or 8 + n > src.size:
        raise CorruptFile(
            src.path,
            f"header length {n} exceeds the file size {src.size} "
            f"(or the {MAX_HEADER_BYTES}-byte limit)",
            offset=0,
        )
    try:
        return n, parse_header(src.read_at(8, n))
    except ValueError as exc:
        raise CorruptFile(src.path, str(exc), offset=8) from None


def read_tensors(src: Source) -> tuple[list[TensorInfo], dict[str, str]]:
    """The tensors (in file order) and the ``__metadata__`` of one safetensors file.

    Raises:
        CorruptFile: anything the safetensors library would refuse to open.
    """
    n, header = read_header(src)
    try:
        metadata, entries = validate(header, src.size - 8 - n)
    except ValueError as exc:
        raise CorruptFile(src.path, str(exc), offset=8) from None
    infos = [
        TensorInfo(
            name, dtypes.from_safetensors(code), shape, end - begin, data_offset=8 + n + begin
        )
        for name, code, shape, begin, end in entries
    ]
    return infos, metadata


def loader_for(path: Path) -> Callable[[TensorInfo], np.ndarray]:
    """A function reading one tensor's bytes from ``path`` (memory-mapped, copy on read)."""

    def load(info: TensorInfo) -> np.ndarray:
        target = path if info.file is None else path.parent / info.file
        if dtypes.itemsize(info.dtype) is None:
            raise InvalidRequest(
                f"{target}: tensor {info.name!r} has dtype {info.dtype}, which keishiki cannot read"
            )
        dtype = dtypes.to_numpy(info.dtype)
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=dtype)
        mm = np.memmap(
            target, dtype=np.uint8, mode="r", offset=info.data_offset, shape=(info.nbytes,)
        )
        return np.array(mm).view(dtype).reshape(info.shape)

    return load


def read(src: Source, match) -> ModelInfo:
    infos, metadata = read_tensors(src)
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        variant=match.variant,
        tensors=infos,
        metadata=dict(metadata),
        tensor_loader=loader_for(src.path),
    )


# ---- writing ----------------------------------------------------------------------------------


def build_header(infos: Sequence[TensorInfo], metadata: dict[str, str] | None) -> bytes:
    """The padded JSON header for tensors written back to back in ``infos`` order."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for info in infos:
        header[info.name] = {
            "dtype": dtypes.to_safetensors(info.dtype),
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data section, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def write(
    fh: BinaryIO,
    tensors: Sequence[LazyTensor],
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[TensorInfo], None] | None = None,
) -> None:
    """Stream ``tensors`` into an open binary file as safetensors, one tensor in memory at a time.

    Each ``LazyTensor.info`` must carry the dtype, shape and nbytes that ``load()`` will
    return; a mismatch raises ValueError before anything inconsistent is written past it.
    """
    fh.write(build_header([t.info for t in tensors], metadata))
    for lazy in tensors:
        arr = np.asarray(lazy.load(), order="C")  # (ascontiguousarray turns 0-d into 1-d)
        data = (
            arr.tobytes()
            if arr.dtype.byteorder not in (">",)
            else arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        )
        if len(data) != lazy.info.nbytes or tuple(arr.shape) != tuple(lazy.info.shape):
            raise ValueError(
                f"{lazy.name}: loaded {arr.dtype}{list(arr.shape)} "
                f"({len(data)} bytes) but the header says {lazy.info.dtype}"
                f"{list(lazy.info.shape)} ({lazy.info.nbytes} bytes)"
            )
        fh.write(data)
        if on_tensor is not None:
            on_tensor(lazy.info)
