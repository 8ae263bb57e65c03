"""The Lua Torch7 ``torch.save`` object stream, parsed without running anything.

Every value is a type tag then its payload (torch7 ``File.lua``): 0 nil, 1 number (double),
2 string (int32 length + bytes), 3 table (int32 memo index, int32 n, n key/value pairs),
4 torch object (int32 memo index, ``"V <n>"`` version string — absent in pre-versioning
files, where the first string *is* the class name — class name, then the class's payload),
5 boolean (int32), 6/7/8 functions (memo index, int32 size, Lua bytecode, upvalues).
Objects with a memo index are read once; later references reuse the first read, which is
also how a table can contain itself.  Tensors and storages have their own payloads
(``generic/Tensor.c``, ``generic/Storage.c``); storage bytes are skipped, only located.

The ascii variant writes the same values as text: integers and doubles as whitespace
separated tokens, strings and byte storages as raw bytes after their length line.
Function bytecode is recorded (size only), never loaded.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ..core.lazy_numpy import np  # numpy on first use (start-up time)

MAX_DEPTH = 200  # nesting beyond this is an attack or corruption, not a model
MAX_OBJECTS = 5_000_000  # values read in one file
MAX_NDIM = 64

# torch.<X>Tensor / torch.<X>Storage (and cutorch's torch.Cuda<X>...) element types
_ELEMENT = {
    "Double": "float64",
    "Float": "float32",
    "Half": "float16",
    "Long": "int64",
    "Int": "int32",
    "Short": "int16",
    "Char": "int8",
    "Byte": "uint8",
    "Bool": "bool",
    "Cuda": "float32",
    "CudaDouble": "float64",
    "CudaHalf": "float16",
    "CudaLong": "int64",
    "CudaInt": "int32",
    "CudaShort": "int16",
    "CudaChar": "int8",
    "CudaByte": "uint8",
}
_ITEMSIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
_TENSOR = re.compile(r"^torch\.(\w*?)Tensor$")
_STORAGE = re.compile(r"^torch\.(\w*?)Storage$")
_CLASS_NAME = re.compile(r"^[A-Za-z_][\w.]*$")  # Lua class names: nn.Linear, torch.FloatTensor
TYPE_NAMES = {
    0: "nil",
    1: "number",
    2: "string",
    3: "table",
    4: "torch",
    5: "boolean",
    6: "function",
    7: "recur_function",
    8: "legacy_recur_function",
}


class Truncated(Exception):
    """Ran out of bytes (a truncated file, or the end of a sniffer's head buffer)."""


class Malformed(Exception):
    """The bytes break the format's rules."""


def element_type(class_name: str) -> str | None:
    """``torch.FloatTensor``/``torch.FloatStorage`` -> ``float32``; None for other classes."""
    m = _TENSOR.match(class_name) or _STORAGE.match(class_name)
    if m is None:
        return None
    return _ELEMENT.get(m.group(1) or "Double")  # plain torch.Tensor is a DoubleTensor


@dataclass(eq=False)
class Table:
    index: int
    items: list[tuple[Any, Any]] = field(default_factory=list)

    @property
    def is_list(self) -> bool:
        """Keys are exactly {1..n} in any order (what Lua calls a sequence; torchfile's
        list heuristic)."""
        keys = [k for k, _ in self.items]
        if not all(
            isinstance(k, float) and not isinstance(k, bool) and k.is_integer() for k in keys
        ):
            return False
        return sorted(int(k) for k in keys) == list(range(1, len(keys) + 1))


@dataclass(eq=False)
class Storage:
    class_name: str
    dtype: str
    size: int
    data_offset: int | None = None  # binary: absolute offset of the raw data
    text_offset: int | None = None  # ascii: offset of the values' text line


@dataclass(eq=False)
class Tensor:
    class_name: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int  # 0-based, in elements
    storage: Storage | None


@dataclass(eq=False)
class TorchObject:
    index: int
    class_name: str
    version: int
    content: Any = None


@dataclass(eq=False)
class Function:
    kind: str
    bytecode_size: int
    upvalues: Any = None


class _Binary:
    """Little-endian binary values from a file object, bounded by ``size``."""

    ascii = False

    def __init__(self, fh: BinaryIO, size: int, long_size: int = 8):
        self.fh, self.size, self.long_size = fh, size, long_size
        self.pos = 0

    def _read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise Truncated(self.pos)
        data = self.fh.read(n)
        if len(data) != n:
            raise Truncated(self.pos)
        self.pos += n
        return data

    def int(self) -> int:
        return int.from_bytes(self._read(4), "little", signed=True)

    def long(self) -> int:
        return int.from_bytes(self._read(self.long_size), "little", signed=True)

    def longs(self, n: int) -> list[int]:
        return [self.long() for _ in range(n)]

    def double(self) -> float:
        return struct.unpack("<d", self._read(8))[0]

    def chars(self, n: int) -> bytes:
        return self._read(n)

    def skip_values(self, n: int, dtype: str) -> tuple[int | None, int | None]:
        need = n * _ITEMSIZE[dtype]
        if need > self.size - self.pos:
            raise Truncated(self.pos)
        start = self.pos
        self.fh.seek(need, 1)
        self.pos += need
        return start, None


class _Ascii:
    """The same values written as text (torch.DiskFile's ascii mode)."""

    ascii = True
    _SPACE = b" \t\r\n"

    def __init__(self, data: bytes, size: int):
        self.data, self.size = data, size
        self.pos = 0

    def _token(self) -> bytes:
        data, n = self.data, len(self.data)
        i = self.pos
        while i < n and data[i] in self._SPACE:
            i += 1
        j = i
        while j < n and data[j] not in self._SPACE:
            j += 1
        if j == n and (n < self.size or i == j):
            raise Truncated(i)  # the token may continue past what we hold
        self.pos = j
        return data[i:j]

    def int(self) -> int:
        tok = self._token()
        try:
            return int(tok)
        except ValueError:
            raise Malformed(f"expected an integer, found {tok[:20]!r}") from None

    long = int

    def longs(self, n: int) -> list[int]:
        return [self.int() for _ in range(n)]

    def double(self) -> float:
        tok = self._token()
        try:
            return float(tok)
        except ValueError:
            raise Malformed(f"expected a number, found {tok[:20]!r}") from None

    def _newline(self) -> None:
        # DiskFile's auto-spacing: one '\n' ends every write
        if self.pos < len(self.data) and self.data[self.pos : self.pos + 1] == b"\n":
            self.pos += 1

    def chars(self, n: int) -> bytes:
        self._newline()
        if n < 0 or self.pos + n > len(self.data):
            raise Truncated(self.pos)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        self._newline()
        return out

    def skip_values(self, n: int, dtype: str) -> tuple[int | None, int | None]:
        if n == 0:  # DiskFile writes nothing at all (not even the newline) for no values
            return None, self.pos
        if dtype in ("uint8", "int8"):  # byte storages are raw in ascii mode too
            self._newline()
            start = self.pos
            self.chars(n)
            return None, start
        self._newline()
        start = self.pos
        end = self.data.find(b"\n", start)
        if end < 0:
            if len(self.data) < self.size or n > 0:
                raise Truncated(start)
            end = len(self.data)
        if n and len(self.data[start:end].split()) != n:
            raise Malformed(
                f"storage of {n} values has {len(self.data[start:end].split())} on its line"
            )
        self.pos = end
        return None, start


class Parser:
    """Reads one ``torch.save`` object graph; see the module docstring for the layout."""

    def __init__(self, stream: _Binary | _Ascii):
        self.s = stream
        self.memo: dict[int, Any] = {}
        self.n_objects = 0
        self.root_header: tuple[str | None, str] | None = None  # (version string, class)

    def read(self, depth: int = 0) -> Any:
        """The next value (raises Truncated / Malformed)."""
        self.n_objects += 1
        if depth > MAX_DEPTH or self.n_objects > MAX_OBJECTS:
            raise Malformed(f"nesting deeper than {MAX_DEPTH} or more than {MAX_OBJECTS} values")
        tag = self.s.int()
        if tag == 0:
            return None
        if tag == 1:
            return self.s.double()
        if tag == 2:
            return self._string()
        if tag == 5:
            return self.s.int() == 1
        if tag in (3, 4, 6, 7, 8):
            index = self.s.int()
            if index in self.memo:
                return self.memo[index]
            if tag == 3:
                return self._table(index, depth)
            if tag == 4:
                return self._torch(index, depth)
            return self._function(tag, index, depth)
        raise Malformed(f"unknown type tag {tag}")

    def _count(self, what: str, minimum_bytes: int) -> int:
        n = self.s.int()
        if n < 0 or n * minimum_bytes > self.s.size - self.s.pos + minimum_bytes:
            raise Malformed(f"{what} of {n} entries does not fit in the file")
        return n

    def _string(self) -> str:
        n = self._count("string", 1)
        return self.s.chars(n).decode("utf-8", errors="replace")

    def _table(self, index: int, depth: int) -> Table:
        n = self._count("table", 4 if self.s.ascii else 8)
        table = Table(index)
        self.memo[index] = table  # before the contents: a table may contain itself
        for _ in range(n):
            key = self.read(depth + 1)
            table.items.append((key, self.read(depth + 1)))
        return table

    def _function(self, tag: int, index: int, depth: int) -> Function:
        size = self._count("function bytecode", 1)
        code = self.s.chars(size)
        if not code.startswith(b"\x1b"):  # Lua / LuaJIT bytecode signature
            raise Malformed("function payload is not Lua bytecode")
        func = Function(TYPE_NAMES[tag], size)
        self.memo[index] = func
        func.upvalues = self.read(depth + 1)
        return func

    def _torch(self, index: int, depth: int) -> Any:
        first = self._string()
        if first.startswith("V "):
            try:
                version = int(float(first[2:]))
            except ValueError:
                raise Malformed(f"bad version string {first[:20]!r}") from None
            class_name = self._string()
        else:
            version, class_name = 0, first  # written before torch versioned its objects
        if not _CLASS_NAME.match(class_name) or len(class_name) > 256:
            raise Malformed(f"bad class name {class_name[:40]!r}")
        if depth == 0:
            self.root_header = (first if first.startswith("V ") else None, class_name)
        dtype = element_type(class_name)
        if dtype is not None and class_name.endswith("Tensor"):
            obj = self._tensor(class_name, dtype, depth)
        elif dtype is not None:
            obj = self._storage(class_name, dtype)
        else:
            obj = TorchObject(index, class_name, version)
            self.memo[index] = obj
            obj.content = self._payload(class_name, depth)
            return obj
        self.memo[index] = obj
        return obj

    def _payload(self, class_name: str, depth: int) -> Any:
        if class_name in ("tds.Vec", "tds.Hash"):
            # tds writes its own layout: element count, a (nil) metatable slot, the elements
            n = self._count(class_name, 4 if self.s.ascii else 8)
            self.read(depth + 1)
            table = Table(-1)
            for i in range(n):
                if class_name == "tds.Vec":
                    table.items.append((float(i + 1), self.read(depth + 1)))
                else:
                    key = self.read(depth + 1)
                    table.items.append((key, self.read(depth + 1)))
            return table
        return self.read(depth + 1)  # nn modules and other classes: their field table

    def _storage(self, class_name: str, dtype: str) -> Storage:
        size = self.s.long()
        if size < 0 or size * _ITEMSIZE[dtype] > self.s.size:
            raise Malformed(f"{class_name} of {size} elements does not fit in the file")
        data_offset, text_offset = self.s.skip_values(size, dtype)
        return Storage(class_name, dtype, size, data_offset, text_offset)

    def _tensor(self, class_name: str, dtype: str, depth: int) -> Tensor:
        ndim = self.s.int()
        if not 0 <= ndim <= MAX_NDIM:
            raise Malformed(f"tensor with {ndim} dimensions")
        shape = tuple(self.s.longs(ndim))
        stride = tuple(self.s.longs(ndim))
        offset = self.s.long() - 1  # stored 1-based
        storage = self.read(depth + 1)
        if storage is not None and not isinstance(storage, Storage):
            raise Malformed(f"{class_name} refers to a {type(storage).__name__}, not a storage")
        if any(d < 0 for d in shape) or offset < 0:
            raise Malformed(f"{class_name} with negative size or offset {list(shape)}")
        if storage is None or ndim == 0:
            return Tensor(class_name, dtype, (0,), (1,), 0, None)  # an empty tensor
        if math.prod(shape) > 0:
            last = offset + sum((d - 1) * s for d, s in zip(shape, stride))
            if any(s < 0 for s in stride) or last >= storage.size:
                raise Malformed(
                    f"{class_name}{list(shape)} strides {list(stride)} reach "
                    f"outside its storage of {storage.size}"
                )
        return Tensor(class_name, dtype, shape, stride, offset, storage)


def parser_for(fh: BinaryIO | bytes, size: int, ascii: bool, long_size: int = 8) -> Parser:
    """A parser over ``fh`` (a binary file object, or the text itself for ascii) of ``size`` bytes."""
    stream = _Ascii(fh, size) if ascii else _Binary(fh, size, long_size)  # type: ignore[arg-type]
    return Parser(stream)


def load_values(path, storage: Storage, ascii: bool) -> np.ndarray:
    """A storage's elements as a 1-D numpy array, read from ``path``."""
    np_dtype = np.dtype(storage.dtype).newbyteorder("<")
    if storage.size == 0:
        return np.zeros(0, np_dtype)
    if not ascii:
        return np.fromfile(path, dtype=np_dtype, count=storage.size, offset=storage.data_offset)
    with open(path, "rb") as fh:
        fh.seek(storage.text_offset)
        if storage.dtype in ("uint8", "int8"):
            return np.frombuffer(fh.read(storage.size), np_dtype).copy()
        line = fh.readline()
    return np.array([float(t) if np_dtype.kind == "f" else int(t) for t in line.split()], np_dtype)
