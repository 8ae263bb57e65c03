"""safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.

Reading parses only the header (bounded: safetensors itself refuses headers over 100 MB).
The writer streams one tensor at a time, so converting never holds a whole model in memory;
safetensors' own ``save_file`` needs every tensor materialised at once and refuses shared
storages, which is why keishiki writes the (simple, documented) layout itself.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

from ..core import dtypes
from ..core.model import ModelInfo
from ..core.source import Source
from ..core.tensor import LazyTensor, TensorInfo
from ..errors import CorruptFile, InvalidRequest

FORMAT = "safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit safetensors' own reader enforces


def sniff(src: Source):
    from . import Match

    head = src.head
    if src.is_dir or len(head) < 10:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > src.size:
        return None
    if head[8:9] != b"{":
        return None
    return Match(FORMAT, None, reason="u64 header length followed by a JSON object")


def read_header(src: Source) -> tuple[int, dict[str, Any]]:
    """(header length, parsed header) with every entry checked against the file size."""
    if src.size < 8:
        raise CorruptFile(src.path, "shorter than the 8-byte header length", offset=0)
    (n,) = struct.unpack("<Q", src.peek(8))
    if n > MAX_HEADER_BYTES or 8 + n > src.size:
        raise CorruptFile(src.path, f"header length {n} exceeds the file size {src.size} "
                          f"(or the {MAX_HEADER_BYTES}-byte limit)", offset=0)
    raw = src.read_at(8, n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptFile(src.path, f"header is not valid JSON: {exc}", offset=8) from None
    if not isinstance(header, dict):
        raise CorruptFile(src.path, "header is not a JSON object", offset=8)
    return n, header


def _tensor_info(src: Source, name: str, entry: Any, data_start: int) -> TensorInfo:
    try:
        code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        shape = tuple(int(d) for d in shape)
        begin, end = int(begin), int(end)
    except (TypeError, KeyError, ValueError) as exc:
        raise CorruptFile(src.path, f"tensor {name!r}: malformed header entry ({exc})") from None
    dtype = dtypes.from_safetensors(str(code))
    if any(d < 0 for d in shape) or not 0 <= begin <= end or data_start + end > src.size:
        raise CorruptFile(src.path, f"tensor {name!r}: offsets [{begin}, {end}] or shape "
                          f"{list(shape)} outside the file", offset=data_start + begin)
    size = dtypes.itemsize(dtype)
    if size is not None and math.prod(shape) * size != end - begin:
        raise CorruptFile(src.path, f"tensor {name!r}: {dtype}{list(shape)} needs "
                          f"{math.prod(shape) * size} bytes, header gives {end - begin}")
    return TensorInfo(name, dtype, shape, end - begin, data_offset=data_start + begin)


def read_tensors(src: Source) -> tuple[list[TensorInfo], dict[str, str]]:
    """The tensors (in file order) and the ``__metadata__`` of one safetensors file."""
    n, header = read_header(src)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CorruptFile(src.path, "__metadata__ is not an object")
    infos = [_tensor_info(src, k, v, 8 + n) for k, v in header.items()]
    infos.sort(key=lambda t: t.data_offset or 0)
    return infos, metadata


def loader_for(path: Path) -> Callable[[TensorInfo], np.ndarray]:
    """A function reading one tensor's bytes from ``path`` (memory-mapped, copy on read)."""

    def load(info: TensorInfo) -> np.ndarray:
        target = path if info.file is None else path.parent / info.file
        if dtypes.itemsize(info.dtype) is None:
            raise InvalidRequest(f"{target}: tensor {info.name!r} has dtype {info.dtype}, "
                                 f"which keishiki cannot read")
        dtype = dtypes.to_numpy(info.dtype)
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=dtype)
        mm = np.memmap(target, dtype=np.uint8, mode="r", offset=info.data_offset,
                       shape=(info.nbytes,))
        return np.array(mm).view(dtype).reshape(info.shape)

    return load


def read(src: Source, match) -> ModelInfo:
    infos, metadata = read_tensors(src)
    return ModelInfo(path=str(src.path), format=FORMAT, variant=match.variant,
                     tensors=infos, metadata=dict(metadata), tensor_loader=loader_for(src.path))


# ---- writing ----------------------------------------------------------------------------------

def build_header(infos: Sequence[TensorInfo], metadata: dict[str, str] | None) -> bytes:
    """The padded JSON header for tensors written back to back in ``infos`` order."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for info in infos:
        header[info.name] = {"dtype": dtypes.to_safetensors(info.dtype), "shape": list(info.shape),
                             "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data section, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def write(fh: BinaryIO, tensors: Sequence[LazyTensor], metadata: dict[str, str] | None = None,
          on_tensor: Callable[[TensorInfo], None] | None = None) -> None:
    """Stream ``tensors`` into an open binary file as safetensors, one tensor in memory at a time.

    Each ``LazyTensor.info`` must carry the dtype, shape and nbytes that ``load()`` will
    return; a mismatch raises ValueError before anything inconsistent is written past it.
    """
    fh.write(build_header([t.info for t in tensors], metadata))
    for lazy in tensors:
        arr = np.asarray(lazy.load(), order="C")  # (ascontiguousarray turns 0-d into 1-d)
        data = arr.tobytes() if arr.dtype.byteorder not in (">",) else arr.astype(
            arr.dtype.newbyteorder("<")).tobytes()
        if len(data) != lazy.info.nbytes or tuple(arr.shape) != tuple(lazy.info.shape):
            raise ValueError(f"{lazy.name}: loaded {arr.dtype}{list(arr.shape)} "
                             f"({len(data)} bytes) but the header says {lazy.info.dtype}"
                             f"{list(lazy.info.shape)} ({lazy.info.nbytes} bytes)")
        fh.write(data)
        if on_tensor is not None:
            on_tensor(lazy.info)
