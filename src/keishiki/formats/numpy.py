"""numpy: ``.npy`` arrays (magic ``\\x93NUMPY``) and ``.npz`` zips of ``.npy`` members.

The header is a Python dict literal, parsed with :func:`ast.literal_eval` (which evaluates
literals only) rather than ``np.load``.  Object arrays (``|O``) are pickles: they are
reported but never loaded, since loading them needs ``allow_pickle=True`` and runs the
pickle.  Data is read with ``np.memmap``/``np.frombuffer``, never with ``np.load``.
"""

from __future__ import annotations

import ast
import math
import struct
import zipfile
from typing import Any

from ..core import dtypes
from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.model import ModelInfo
from ..core.source import Source, check_expansion
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from .registry import Match

FORMAT = "numpy"
MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 1 << 20  # numpy's own default limit is 10 kB; 1 MB leaves room for big shapes


def sniff(src: Source) -> Match | None:
    if src.is_dir:
        return None
    if src.head[:6] == MAGIC and len(src.head) >= 10:
        return Match(FORMAT, "npy", reason="\\x93NUMPY magic")
    names = src.zip_names
    if names and all(n.endswith(".npy") for n in names):
        return Match(FORMAT, "npz", reason="zip whose members are all .npy arrays")
    return None


def parse_header(raw: bytes, where: str) -> tuple[int, np.dtype, tuple[int, ...], bool]:
    """(header length incl. preamble, dtype, shape, fortran_order) of an ``.npy`` preamble.

    Raises:
        ValueError: with a one-line reason (callers wrap it in CorruptFile).
    """
    if raw[:6] != MAGIC or len(raw) < 10:
        raise ValueError(f"{where}: missing the \\x93NUMPY magic")
    major = raw[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", raw[8:10]), 10
    elif major in (2, 3):
        if len(raw) < 12:
            raise ValueError(f"{where}: truncated preamble")
        (hlen,), start = struct.unpack("<I", raw[8:12]), 12
    else:
        raise ValueError(f"{where}: unknown .npy version {major}.{raw[7]}")
    if hlen > MAX_HEADER_BYTES:
        raise ValueError(f"{where}: header of {hlen} bytes exceeds {MAX_HEADER_BYTES}")
    if len(raw) < start + hlen:
        raise ValueError(f"{where}: header runs past the end of the data")
    text = raw[start : start + hlen].decode("utf-8" if major == 3 else "latin1")
    try:
        header = ast.literal_eval(text)  # literals only: no names, calls or attributes
        if not isinstance(header, dict):
            raise ValueError("not a dict")
        if not isinstance(header["shape"], tuple) or not all(
            type(d) is int for d in header["shape"]
        ):  # what numpy's own header check refuses (a float, a list, a bool)
            raise ValueError(f"shape {header['shape']!r} is not a tuple of ints")
        shape = tuple(header["shape"])
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        fortran = bool(header["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(f"{where}: malformed header ({type(exc).__name__}: {exc})") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"{where}: negative dimension in shape {list(shape)}")
    return start + hlen, dtype, shape, fortran


def _dtype_name(dtype: np.dtype) -> str:
    return dtypes.from_numpy(dtype) if dtype.fields is None else f"struct{dtype.itemsize * 8}"


def _info(
    name: str,
    dtype: np.dtype,
    shape: tuple[int, ...],
    fortran: bool,
    data_offset: int | None,
    member: str | None,
) -> TensorInfo:
    extra: dict[str, Any] = {}
    if fortran:
        extra["fortran_order"] = True
    if dtype.byteorder == ">":
        extra["byteorder"] = "big"
    return TensorInfo(
        name,
        _dtype_name(dtype),
        shape,
        math.prod(shape) * dtype.itemsize,
        data_offset=data_offset,
        file=member,
        extra=extra,
    )


def _stored_data_start(src: Source, zinfo: zipfile.ZipInfo) -> int:
    """Absolute offset of a STORED member's first byte (after its local file header)."""
    local = src.read_at(zinfo.header_offset, 30)
    if local[:4] != b"PK\x03\x04":
        raise CorruptFile(
            src.path, f"zip member {zinfo.filename!r}: bad local header", offset=zinfo.header_offset
        )
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return zinfo.header_offset + 30 + name_len + extra_len


def _read_npz(src: Source) -> tuple[list[TensorInfo], list[str], dict]:
    infos, objects, placement = [], [], {}
    zf = src.zip()
    for zinfo in zf.infolist():
        where = f"member {zinfo.filename!r}"
        try:
            with zf.open(zinfo) as fh:
                raw = fh.read(12)
                if len(raw) >= 12 and raw[6] in (2, 3):
                    hlen = struct.unpack("<I", raw[8:12])[0]
                else:
                    hlen = struct.unpack("<H", raw[8:10])[0] if len(raw) >= 10 else 0
                raw += fh.read(min(hlen, MAX_HEADER_BYTES + 1))
            header_len, dtype, shape, fortran = parse_header(raw, where)
        except ValueError as exc:
            raise CorruptFile(src.path, str(exc)) from None
        except Exception as exc:  # ZIP_ERRORS, zlib.error from a damaged stream
            raise CorruptFile(src.path, f"{where} unreadable: {exc}") from None
        name = zinfo.filename[:-4]
        if dtype.hasobject:
            objects.append(name)
            continue
        nbytes = math.prod(shape) * dtype.itemsize
        check_expansion(src.path, zinfo)
        if header_len + nbytes != zinfo.file_size:
            raise CorruptFile(
                src.path,
                f"{where}: {dtype}{list(shape)} needs {nbytes} bytes "
                f"after a {header_len}-byte header, member has {zinfo.file_size}",
            )
        offset = None
        if zinfo.compress_type == zipfile.ZIP_STORED:
            start = _stored_data_start(src, zinfo)
            if start + zinfo.file_size > src.size:  # (its sizes in the directory lie)
                raise CorruptFile(
                    src.path,
                    f"{where}: {zinfo.file_size} stored bytes run past the end of the file",
                    offset=start,
                )
            offset = start + header_len
        infos.append(_info(name, dtype, shape, fortran, offset, zinfo.filename))
        placement[name] = (zinfo, header_len, dtype, fortran)
    return infos, objects, placement


def _to_row_major(flat: np.ndarray, dtype: np.dtype, shape: tuple, fortran: bool) -> np.ndarray:
    arr = flat.view(dtype).reshape(shape, order="F" if fortran else "C")
    # (np.ascontiguousarray would turn a 0-d array into shape (1,))
    arr = arr if arr.flags.c_contiguous else arr.copy(order="C")
    if dtype.byteorder == ">":  # keishiki hands out native-order arrays
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def _loader(src: Source, placement: dict):
    path = src.path

    def load(info: TensorInfo) -> np.ndarray:
        zinfo, header_len, dtype, fortran = placement[info.name]
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=dtype.newbyteorder("="))
        if info.data_offset is not None:
            flat = np.array(
                np.memmap(path, np.uint8, "r", offset=info.data_offset, shape=(info.nbytes,))
            )
        else:  # deflated member: stream it, bounded by the member's declared size
            with zipfile.ZipFile(path) as zf, zf.open(zinfo) as fh:
                fh.read(header_len)
                flat = np.frombuffer(fh.read(info.nbytes), np.uint8)
            if flat.size != info.nbytes:
                raise CorruptFile(
                    path, f"member {zinfo.filename!r} is shorter than its header says"
                )
        return _to_row_major(flat, dtype, info.shape, fortran)

    return load


def read(src: Source, match) -> ModelInfo:
    head = src.peek(8)
    version = f"{head[6]}.{head[7]}" if match.variant == "npy" and len(head) == 8 else None
    if match.variant == "npz":
        infos, objects, placement = _read_npz(src)
    else:
        try:
            header_len, dtype, shape, fortran = parse_header(
                src.peek(min(src.size, MAX_HEADER_BYTES + 12)), "header"
            )
        except ValueError as exc:
            raise CorruptFile(src.path, str(exc), offset=0) from None
        objects, infos, placement = [], [], {}
        if dtype.hasobject:
            objects.append("array")
        else:
            nbytes = math.prod(shape) * dtype.itemsize
            if header_len + nbytes != src.size:
                raise CorruptFile(
                    src.path,
                    f"{dtype}{list(shape)} needs {nbytes} bytes after "
                    f"the {header_len}-byte header, file has "
                    f"{src.size - header_len}",
                    offset=header_len,
                )
            infos.append(_info("array", dtype, shape, fortran, header_len, None))
            placement["array"] = (None, header_len, dtype, fortran)
    warnings = []
    if objects:
        warnings.append(
            f"object arrays {objects} are pickles: loading them needs "
            f"allow_pickle=True, which would run code from the file; keishiki "
            f"does not load them"
        )
    details = {
        "arrays": {t.name: f"{t.dtype}{list(t.shape)}" for t in infos},
        "object_arrays": objects,
    }
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        variant=match.variant,
        format_version=version,
        tensors=infos,
        warnings=warnings,
        details={FORMAT: details},
        tensor_loader=_loader(src, placement),
    )
