"""How torch pickles tensors, read from the restricted VM's output; and loading their bytes.

Shared by the ``pytorch`` (torch.save zip/legacy), ``torchscript`` and ``torch-export``
readers.  A tensor is a call ``torch._utils._rebuild_tensor_v2(storage, storage_offset,
size, stride, requires_grad, hooks[, metadata])`` (or one of its relatives below) whose
storage is the persistent id ``('storage', torch.FloatStorage, key, location, numel)``.
:func:`walk_tensors` names every tensor by its place in the pickled structure the way
``state_dict()`` would; :func:`loader_for` reads only the bytes a tensor's view spans and
applies offset/shape/stride with numpy.  Nothing here imports torch or runs pickled code.
"""

from __future__ import annotations

import _compat_pickle
import math
import operator
import os
import struct
import time
import weakref
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from ..core import dtypes
from ..core.lazy_numpy import np  # numpy on first use (start-up time)
from ..core.pickle_reader import (
    Call,
    GlobalRef,
    OpaqueKey,
    PersistentId,
    PickleRecord,
    read_pickle,
    safe_key,
    type_name,
)
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile, InvalidRequest

MAX_NAMING_VISITS = 5_000_000
MAX_EXPANSION_BYTES = 1 << 32  # a stride-0 view may expand its stored bytes this far at most

# the functions torch pickles a tensor as; arguments start (storage, storage_offset, size, stride)
REBUILD_TENSOR = {
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_tensor_v3",
}
REBUILD_WRAPPERS = {  # first argument is the tensor itself
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
}
REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"  # (func, new_type, args, state)
REBUILD_META = "torch._utils._rebuild_meta_tensor_no_storage"  # (dtype, size, stride, ...)
MAPPING_TYPES = {"collections.OrderedDict", "builtins.dict", "__builtin__.dict"}


@dataclass(frozen=True)
class StorageRef:
    """One storage a tensor points at: key (zip member data/<key>), dtype, element count."""

    key: str
    dtype: str
    numel: int
    location: str
    view_offset: int = 0  # legacy storage views: element offset into the root storage


@dataclass(frozen=True)
class TensorRef:
    """A tensor rebuild call, decoded: its storage and the view on it."""

    storage: StorageRef | None
    dtype: str
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    kind: str  # "tensor", "parameter", "meta", "quantized", "subclass"
    # torch's lazy view bits from the rebuild's ``metadata`` ({"neg": True}, {"conj": True}):
    # the values are the stored ones negated / conjugated (torch.load applies them)
    flags: tuple[str, ...] = ()


_INT_ONLY = frozenset({int})
_new = object.__new__


def _tensor_ref(
    storage: StorageRef | None,
    dtype: str,
    storage_offset: int,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    kind: str,
    flags: tuple[str, ...] = (),
) -> TensorRef:
    """``TensorRef(...)`` without the frozen dataclass's per-field ``object.__setattr__``
    (a third of the per-tensor cost); equal, hashable and immutable all the same."""
    ref = _new(TensorRef)
    ref.__dict__.update(
        storage=storage,
        dtype=dtype,
        storage_offset=storage_offset,
        shape=shape,
        stride=stride,
        kind=kind,
    )
    if flags:  # (the class default otherwise)
        ref.__dict__["flags"] = flags
    return ref


def _storage_ref(
    key: str, dtype: str, numel: int, location: str, view_offset: int = 0
) -> StorageRef:
    """``StorageRef(...)``, built like :func:`_tensor_ref`."""
    ref = _new(StorageRef)
    ref.__dict__.update(
        key=key, dtype=dtype, numel=numel, location=location, view_offset=view_offset
    )
    return ref


def _ints(value: Any, what: str, path: str) -> tuple[int, ...]:
    # fast path, C-level checks only: a tuple of at most 64 non-negative ints (bool excluded)
    if (
        type(value) is tuple
        and len(value) <= 64
        and _INT_ONLY.issuperset(map(type, value))
        and (not value or min(value) >= 0)
    ):
        return value
    if isinstance(value, Call) and value.args:  # torch.Size((2, 3)) when pickled as a call
        value = value.args[0]
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise CorruptFile(path, f"tensor {what} is not a tuple of ints")
    if len(value) > 64 or any(v < 0 for v in value):
        raise CorruptFile(path, f"tensor {what} {list(value)[:8]} is out of range")
    return tuple(value)


_STORAGE_DTYPES: dict[str, str | None] = {}  # torch attribute name -> dtype (bounded memo)


def storage_dtype(ref: Any) -> str | None:
    """``torch.FloatStorage`` / ``torch.float16`` / ``torch.UntypedStorage`` (also as
    ``torch.storage.UntypedStorage``, which ``_rebuild_tensor_v3`` files name) -> dtype."""
    if not isinstance(ref, GlobalRef):
        return None
    if ref.module == "torch":
        return _storage_name_dtype(ref.name)
    if ref.module == "torch.storage" and ref.name == "UntypedStorage":
        return "uint8"
    return None


def _storage_name_dtype(name: str) -> str | None:
    """The dtype of the torch attribute ``name`` (``FloatStorage``, ``float16``...)."""
    try:
        return _STORAGE_DTYPES[name]
    except KeyError:
        pass
    if name in ("UntypedStorage", "ByteStorage"):
        dtype: str | None = "uint8"
    else:
        dtype = dtypes.from_torch_storage(name) or dtypes.from_torch_dtype(name)
    if len(_STORAGE_DTYPES) < 256:  # names come from the file: keep the memo small
        _STORAGE_DTYPES[name] = dtype
    return dtype


def decode_storage(pid: Any, path: str) -> StorageRef:
    """``('storage', type, key, location, numel[, view_metadata])`` -> StorageRef."""
    tup = pid.pid if isinstance(pid, PersistentId) else None
    if (
        type(tup) is tuple
        and tup[0:1] == ("storage",)
        and (len(tup) == 5 or (len(tup) == 6 and tup[5] is None))
    ):
        # fast path: ('storage', type, key, location, numel) of the zip layout, and the
        # legacy layout's same tuple with a sixth item, None when the storage is no view
        _, stype, key, location, numel = tup[:5]
        dtype = storage_dtype(stype)
        if dtype is not None and type(key) is str and type(numel) is int and numel >= 0:
            return _storage_ref(
                key, dtype, numel, location if type(location) is str else str(location)
            )
    if not isinstance(tup, tuple) or len(tup) < 5 or tup[0] != "storage":
        raise CorruptFile(
            path, f"unexpected persistent id {type(tup).__name__} (not a torch storage reference)"
        )
    _, stype, key, location, numel = tup[:5]
    dtype = storage_dtype(stype)
    if dtype is None:
        raise CorruptFile(
            path,
            f"storage {key!r}: unknown storage type "
            f"{getattr(stype, 'qualname', type(stype).__name__)}",
        )
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise CorruptFile(path, f"storage {key!r}: malformed key or size")
    view_offset = 0
    if len(tup) > 5 and isinstance(tup[5], tuple) and len(tup[5]) == 3:
        # legacy storage view: (view_key, offset, size) of the root storage `key`
        _view_key, view_offset, numel = tup[5]
        if type(view_offset) is not int or type(numel) is not int or view_offset < 0:
            raise CorruptFile(path, f"storage {key!r}: malformed view metadata")
    return _storage_ref(key, dtype, numel, str(location), view_offset)


_FAST_REBUILD = {
    "_rebuild_tensor_v2": "tensor",
    "_rebuild_tensor": "tensor",
    "_rebuild_tensor_v3": "tensor-v3",
    "_rebuild_qtensor": "quantized",
}


def decode_tensor(call: Call, path: str) -> TensorRef | None:
    """The tensor a rebuild call would make, or None when ``call`` is not a tensor rebuild."""
    args = call.args
    func = call.func
    # fast path: torch._utils._rebuild_tensor_v2 & co. with a storage, the bulk of any file
    if type(func) is GlobalRef and func.module == "torch._utils" and len(args) >= 4:
        kind = _FAST_REBUILD.get(func.name)
        if kind is not None:
            return _storage_tensor(args, path, kind)
    name = call.qualname
    if name in REBUILD_WRAPPERS and args and isinstance(args[0], Call):
        inner = decode_tensor(args[0], path)
        return None if inner is None else _tensor_ref(**{**inner.__dict__, "kind": "parameter"})
    if name == REBUILD_FROM_TYPE and len(args) >= 3 and isinstance(args[2], tuple):
        inner_call = Call(args[0], args[2], None, call.offset, call.opcode)
        inner = decode_tensor(inner_call, path)
        return None if inner is None else _tensor_ref(**{**inner.__dict__, "kind": "subclass"})
    if name == REBUILD_META and len(args) >= 3:
        dtype = storage_dtype(args[0]) or "float32"
        return _tensor_ref(
            None, dtype, 0, _ints(args[1], "size", path), _ints(args[2], "stride", path), "meta"
        )
    if name not in REBUILD_TENSOR or len(args) < 4:
        return None
    return _storage_tensor(args, path, _FAST_REBUILD.get(name.rpartition(".")[2], "tensor"))


def _storage_tensor(args: tuple, path: str, kind: str):
    """The tensor a ``_rebuild_tensor*(storage, storage_offset, size, stride, ...)`` call makes.

    ``_rebuild_tensor_v2(..., requires_grad, hooks[, metadata])``; ``_rebuild_tensor_v3(...,
    requires_grad, hooks, dtype[, metadata])`` (float8, uint16/32/64: an untyped storage of
    bytes, the dtype given apart)."""
    storage = decode_storage(args[0], path)
    metadata = args[6] if kind == "tensor" and len(args) > 6 else None
    if kind == "tensor-v3":
        kind = "tensor"
        dtype = storage_dtype(args[6]) if len(args) > 6 else None
        if dtype is None:
            raise CorruptFile(path, "_rebuild_tensor_v3 without a torch dtype")
        storage = _retyped(storage, dtype, path)
        metadata = args[7] if len(args) > 7 else None
    offset = args[1]
    if type(offset) is not int or offset < 0:
        raise CorruptFile(path, "tensor storage_offset is not a non-negative int")
    shape, stride = _ints(args[2], "size", path), _ints(args[3], "stride", path)
    if len(shape) != len(stride):
        raise CorruptFile(
            path, f"tensor size {list(shape)} and stride {list(stride)} differ in length"
        )
    flags = _value_flags(metadata, path) if metadata else ()
    return _tensor_ref(
        storage, storage.dtype, offset + storage.view_offset, shape, stride, kind, flags
    )


def _retyped(storage: StorageRef, dtype: str, path: str) -> StorageRef:
    """An untyped (byte) storage seen as ``dtype`` elements, as ``_rebuild_tensor_v3`` does."""
    size = dtypes.itemsize(dtype)
    if storage.dtype == dtype:
        return storage
    if storage.dtype != "uint8" or not size or storage.numel % size or storage.view_offset % size:
        raise CorruptFile(
            path, f"storage {storage.key!r}: {storage.numel} bytes are not {dtype} elements"
        )
    return _storage_ref(
        storage.key, dtype, storage.numel // size, storage.location, storage.view_offset // size
    )


def _value_flags(metadata: Any, path: str) -> tuple[str, ...]:
    """The set flags of a rebuild's metadata dict, in a fixed order; a flag keishiki does not
    know is kept too, and the loader refuses it rather than give other values than torch."""
    if not isinstance(metadata, dict):
        raise CorruptFile(path, f"tensor metadata is a {type_name(metadata)}, not a dict")
    return tuple(sorted(str(k) for k, v in metadata.items() if v))


# ---- one reading for the reader and the scan ------------------------------------------------

READ_SECONDS = 8.0  # the scan's per-file budget; a reading cut off by it is redone by the VM
_ATOMS = frozenset((str, int, float, bool, type(None), bytes))


class _Unusual(Exception):
    """The C reading holds something the VM records differently: let the VM read it."""


def read_torch_pickle(
    data: bytes | memoryview,
    start: int = 0,
    *,
    path: str = "<pickle>",
    max_ops: int = 10_000_000,
    torch_names: bool = True,
) -> PickleRecord:
    """One torch pickle stream as :func:`keishiki.core.pickle_reader.read_pickle` records
    it, read by the scanner's inert C unpickler (:func:`keishiki._scan.unpickler.read_stream`).

    Why: ``inspect`` and ``convert`` both need the tensors *and* the safety verdict of the
    same stream.  The scan's reading (CPython's own unpickler with stand-ins, behind the
    bounding lexer) is kept for the scan that follows, which takes it instead of reading
    again, and it runs at C speed where the pure-Python VM costs ~0.3 µs per opcode.  A stream the
    C reading does not finish cleanly, or that holds what the VM records in its own way
    (EXT codes, Python 2 text, stand-ins reaching imports, a second BUILD, tampering with
    a global), is read by the VM instead, so errors and edge cases are the VM's as before.

    ``torch_names`` must match how the scan reads the stream (True for a torch zip's
    ``data.pkl`` and a legacy file's pickles after the magic number) for the reading to be
    shared; either way the result is the same.
    """
    reading = read_torch_object(
        data, start, path=path, max_ops=max_ops, torch_names=torch_names, state_dicts=False
    )
    assert isinstance(reading, PickleRecord)
    return reading


def read_torch_object(
    data: bytes | memoryview,
    start: int = 0,
    *,
    path: str = "<pickle>",
    max_ops: int = 10_000_000,
    torch_names: bool = True,
    state_dicts: bool = True,
) -> "PickleRecord | StateDictReading":
    """:func:`read_torch_pickle`, except that a plain state_dict (see
    :class:`StateDictReading`) comes back as its tensors, read straight from the stand-ins:
    the VM's records of a state_dict cost more than the C reading itself."""
    from .._scan.unpickler import read_stream  # noqa: PLC0415 - keeps scan out of import

    view = data if isinstance(data, memoryview) else memoryview(data)
    deadline = time.monotonic() + READ_SECONDS
    rec = read_stream(view, start, deadline, torch_names=torch_names, share=True)
    if (
        not (rec.error or rec.capped or rec.dynamic or rec.ext or rec.py2_text)
        and rec.n_ops <= max_ops
    ):
        if state_dicts:
            fast = _state_dict(rec, path)
            if fast is not None:
                return fast
        try:
            return _from_stream(rec)
        except (_Unusual, RecursionError):
            pass
    return read_pickle(data, start, path=path, max_ops=max_ops)


_REBUILD_V2 = "torch._utils._rebuild_tensor_v2"
_ORDERED_DICT = "collections.OrderedDict"


@dataclass
class StateDictReading:
    """A plain state_dict read from the scan's stand-ins without the VM's records.

    Plain: the root is a ``dict`` or an ``OrderedDict()`` holding only
    ``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` calls under
    text keys, and the stream calls nothing but those two (what ``torch.save(model
    .state_dict())`` writes).  Everything the pytorch reader derives from the VM's record
    of such a stream (names, tensors, storages, kind, top keys, globals) is here, equal to
    what the VM gives; any other stream is read the general way.
    """

    protocol: int
    global_names: list[str]  # qualnames named in the stream, sorted
    root_type: str
    keys: list[str]  # top-level keys in order
    found: list[tuple[str, None, TensorRef]]  # (name, no call record, tensor) in pickle order
    storages: list[StorageRef]  # one per persistent id, in stream order
    end: int  # the byte after the stream's STOP


def _state_dict(rec: Any, path: str) -> StateDictReading | None:  # noqa: C901 - one pattern
    """The :class:`StateDictReading` of a clean C reading, or None when it is not one."""
    from .._scan.unpickler import Result, Stub  # noqa: PLC0415

    rebuild, ordered = set(), set()
    for g in rec.globals:
        if g.raw is not None:  # a renamed global: the VM records it its own way
            return None
        if g.module == "torch._utils" and g.name == "_rebuild_tensor_v2":
            rebuild.add(id(g))
        elif g.module == "collections" and g.name == "OrderedDict":
            ordered.add(id(g))
    storages: list[StorageRef] = []
    storage_of: dict[int, StorageRef] = {}  # id(stand-in) -> its storage
    callees = rebuild | ordered
    for result in rec.results:  # every call and storage id, reachable or not
        call = result.call
        if call is None:
            storage = _stand_in_storage(result.pid, Stub)
            if storage is None:
                return None
            storages.append(storage)
            storage_of[id(result)] = storage
            continue
        callee = id(call.callee) if call.callee is not None else 0
        if call.kind != "call" or result.n_build > 1 or callee not in callees:
            return None
        state = result.state
        if type(state) is dict and "_modules" in state and "_parameters" in state:
            return None  # an nn.Module's attributes: the general reader names its classes
    root = rec.value
    if type(root) is dict:
        pairs: dict = root
        root_type = "builtins.dict"
    elif (
        type(root) is Result
        and root.call is not None
        and id(root.call.callee) in ordered
        and not root.call.args
        and root.listitems is None
        and (root.dictitems is None or all(type(k) is str for k, _ in root.dictitems))
    ):
        pairs = dict(root.dictitems or ())  # a key given twice keeps its first place
        root_type = _ORDERED_DICT
    else:
        return None
    found: list[tuple[str, None, TensorRef]] = []
    ints_ok = _INT_ONLY.issuperset
    for key, value in pairs.items():
        if type(key) is not str or type(value) is not Result:
            return None
        call = value.call
        if call is None or id(call.callee) not in rebuild or len(call.args) != 6:
            return None
        pid, offset, shape, stride = call.args[:4]
        storage = storage_of.get(id(pid)) if type(pid) is Result else None
        if (
            storage is None
            or type(offset) is not int
            or offset < 0
            or type(shape) is not tuple
            or type(stride) is not tuple
            or len(shape) != len(stride)
            or len(shape) > 64
            or not ints_ok(map(type, shape))
            or not ints_ok(map(type, stride))
            or (shape and min(shape) < 0)
            or (stride and min(stride) < 0)
        ):
            return None  # the general decoder gives the exact error, or reads it its way
        ref = _tensor_ref(storage, storage.dtype, offset, shape, stride, "tensor")
        found.append((key, None, ref))
    return StateDictReading(
        rec.protocol,
        sorted({g.qualname for g in rec.globals}),
        root_type,
        list(pairs),
        found,
        storages,
        rec.end,
    )


def _stand_in_storage(pid: Any, stub: Any) -> StorageRef | None:
    """``decode_storage``'s fast path over a stand-in storage id: ``('storage',
    torch.<X>Storage, key, location, numel[, None])`` with text key and location."""
    if (
        type(pid) is tuple
        and (len(pid) == 5 or (len(pid) == 6 and pid[5] is None))
        and pid[0] == "storage"
    ):
        _, stype, key, location, numel = pid[:5]
        if (
            type(stype) is stub
            and stype._global.module == "torch"
            and type(key) is str
            and type(location) is str
            and type(numel) is int
            and numel >= 0
        ):
            dtype = _storage_name_dtype(stype._global.name)
            if dtype is not None:
                return _storage_ref(key, dtype, numel, location)
    return None


def _from_stream(rec: Any) -> PickleRecord:
    """The VM's record (GlobalRef, Call, PersistentId) of a clean C reading."""
    from .._scan.unpickler import Result, Stub  # noqa: PLC0415

    globals_ = []
    for g in rec.globals:
        module, name, note = _vm_name(g)
        globals_.append(
            GlobalRef(module, name, g.offset if g.offset is not None else rec.start, g.opcode, note)
        )
    first: dict[int, GlobalRef] = {}
    for g, ref in zip(rec.globals, globals_):
        first.setdefault(id(g), ref)
    memo: dict[int, Any] = {}
    atoms = _ATOMS
    new = object.__new__

    def items(seq: Any) -> list:
        return [v if type(v) in atoms else conv(v) for v in seq]

    def conv(obj: Any) -> Any:  # noqa: C901 - one dispatch, most frequent kinds first
        kind = type(obj)
        if kind is tuple and atoms.issuperset(map(type, obj)):
            return obj  # sizes, strides, keys: immutable, shared as they are
        key = id(obj)
        done = memo.get(key)
        if done is not None:
            return done
        if kind is Result:  # a call's result (every tensor is two or three) or a storage id
            call = obj.call
            if call is None:
                out = new(PersistentId)
                pid = obj.pid
                out.__dict__.update(pid=pid if type(pid) in atoms else conv(pid), offset=obj.at)
                memo[key] = out
                return out
            if obj.n_build > 1 or (call.kind != "call" and call.kind != "new"):
                raise _Unusual(call.kind)
            # Call(...) without the dataclass __init__: the same eight fields
            out = memo[key] = new(Call)
            kwargs, state, pairs, listed = call.kwargs, obj.state, obj.dictitems, obj.listitems
            out.__dict__.update(
                func=first[id(call.callee)],
                args=tuple([v if type(v) in atoms else conv(v) for v in call.args]),
                kwargs={k: conv(v) for k, v in kwargs.items()} if kwargs else None,
                offset=call.offset - 1,
                opcode="REDUCE" if call.kind == "call" else "NEWOBJ",
                state=None if state is None else conv(state),
                dictitems=None
                if pairs is None
                else {
                    safe_key(k if type(k) in atoms else conv(k)): v if type(v) in atoms else conv(v)
                    for k, v in pairs
                },
                listitems=None if listed is None else items(listed),
            )
            return out
        if kind is tuple:
            out: Any = tuple([v if type(v) in atoms else conv(v) for v in obj])
        elif kind is Stub:
            out = first[id(obj._global)]
        elif kind is dict:
            out = memo[key] = {}
            for k, v in obj.items():
                out[safe_key(conv(k))] = conv(v)
            return out
        elif kind is list:
            out = memo[key] = []
            out.extend(items(obj))
            return out
        elif kind is set:
            out = memo[key] = set()
            out.update(safe_key(conv(v)) for v in obj)
            return out
        elif kind is frozenset:
            out = frozenset(safe_key(conv(v)) for v in obj)
        elif kind in atoms or kind is bytearray:
            return obj
        else:
            raise _Unusual(kind.__name__)
        memo[key] = out
        return out

    value = conv(rec.value)
    calls, persistent = [], []
    get = memo.get
    for result in rec.results:  # every call and persistent id, reachable or not
        (persistent if result.call is None else calls).append(get(id(result)) or conv(result))
    return PickleRecord(
        value,
        rec.protocol,
        globals_,
        calls,
        rec.start,
        rec.end,
        persistent_ids=persistent,
        n_ops=rec.n_ops,
    )


def _vm_name(g: Any) -> tuple[str, str, str]:
    """(module, name, note) of a global as the VM records it: Python 2 names mapped like
    pickle maps them, torch's own module renames not (a file naming ``torch.tensor`` is
    left to the VM, which keeps the written name)."""
    if g.raw is None:
        return g.module, g.name, ""
    module, name = g.raw
    if (module, name) in _compat_pickle.NAME_MAPPING:
        note = f"python 2 name {module}.{name}"
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        note = f"python 2 module {module}"
        module = _compat_pickle.IMPORT_MAPPING[module]
    else:
        raise _Unusual("renamed by torch")
    if (module, name) != (g.module, g.name):
        raise _Unusual("renamed by torch")
    return module, name, note


def mapping_items(value: Any) -> list[tuple[Any, Any]] | None:
    """(key, value) pairs of a dict or a dict-building call (OrderedDict(...)), else None."""
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, Call) and value.qualname in MAPPING_TYPES:
        pairs: list[tuple[Any, Any]] = []
        if value.args and isinstance(value.args[0], (list, tuple)):
            for item in value.args[0]:  # OrderedDict([[k, v], ...]) in old pickles
                if isinstance(item, (list, tuple)) and len(item) == 2:
                    pairs.append((item[0], item[1]))
        pairs.extend((value.dictitems or {}).items())
        return pairs
    return None


def class_name(call: Call) -> str:
    """The qualname of what ``call`` instantiates, seeing through legacy ('module', cls, ...)
    persistent ids."""
    func = call.func
    if (
        isinstance(func, PersistentId)
        and isinstance(func.pid, tuple)
        and len(func.pid) > 1
        and func.pid[0] == "module"
        and isinstance(func.pid[1], GlobalRef)
    ):
        return func.pid[1].qualname
    return call.qualname


def module_state(value: Any) -> dict | None:
    """The attribute dict of a pickled nn.Module (state with _parameters/_modules), else None."""
    if (
        isinstance(value, Call)
        and isinstance(value.state, dict)
        and "_modules" in value.state
        and "_parameters" in value.state
    ):
        return value.state
    return None


def key_text(key: Any) -> str:
    if isinstance(key, OpaqueKey):
        return repr(key)
    return key if isinstance(key, str) else str(key)


def _children(value: Any) -> list[tuple[str, Any]]:
    """(name part, child) pairs used to name tensors by their place in the structure."""
    state = module_state(value)
    if state is not None:
        out: list[tuple[str, Any]] = []
        for group in ("_parameters", "_buffers", "_modules"):
            out.extend((key_text(k), v) for k, v in mapping_items(state.get(group)) or [])
        out.extend(
            (k, v)
            for k, v in state.items()
            if isinstance(k, str) and not k.startswith("_") and k != "training"
        )
        return out
    items = mapping_items(value)
    if items is not None:
        return [(key_text(k), v) for k, v in items]
    if isinstance(value, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(value)]
    if isinstance(value, Call):
        out = []
        if isinstance(value.state, dict):
            out.extend((key_text(k), v) for k, v in value.state.items())
        elif value.state is not None:
            out.append(("state", value.state))
        out.extend((key_text(k), v) for k, v in (value.dictitems or {}).items())
        out.extend((str(i), v) for i, v in enumerate(value.listitems or []))
        if not out:
            out.extend((str(i), v) for i, v in enumerate(value.args))
        return out
    return []


def plain_value(value: Any, depth: int = 4, max_items: int = 100) -> Any:
    """A JSON-safe, shallow copy of a value read from a file (for ``details``).

    Scalars pass, containers are kept to ``depth`` levels and ``max_items`` entries, and
    anything else (placeholders, deeper nesting) becomes a short description: a hostile
    sys_info or JSON field must not make ``info --json`` recurse or fail.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value[:1000]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if depth <= 0:
        return f"<nested {type(value).__name__}>"
    if isinstance(value, dict):
        return {
            str(key_text(k))[:200]: plain_value(v, depth - 1, max_items)
            for k, v in list(value.items())[:max_items]
        }
    if isinstance(value, (list, tuple)):
        return [plain_value(v, depth - 1, max_items) for v in list(value)[:max_items]]
    return type_name(value)


def walk_tensors(root: Any, path: str) -> Iterator[tuple[str, Call, TensorRef]]:
    """Every tensor reachable from ``root`` as (dotted name, call, decoded), in pickle order."""

    def leaf(value: Any) -> TensorRef | None:
        return decode_tensor(value, path) if isinstance(value, Call) else None

    yield from walk_named(root, path, leaf)


def walk_named(root: Any, path: str, leaf: Callable[[Any], Any]) -> Iterator[tuple[str, Any, Any]]:
    """(dotted name, value, leaf(value)) for every value where ``leaf`` is not None.

    Names follow the pickled structure the way ``state_dict()`` does (mapping keys, list
    indices, a module's parameters/buffers/submodules, other objects' attributes).
    Iterative depth-first walk; a container on the current path is not re-entered (cycles),
    and the total number of visits is capped so a shared-reference "bomb" fails fast.
    """
    todo: list[tuple[str, Any] | tuple[None, int]] = [("", root)]
    on_path: set[int] = set()
    visits = 0
    while todo:
        name, value = todo.pop()
        if name is None:  # leaving a container
            on_path.discard(value)
            continue
        found = leaf(value)
        if found is not None:
            yield name, value, found
            continue
        kids = _children(value)
        if not kids or id(value) in on_path:
            continue
        visits += len(kids)
        if visits > MAX_NAMING_VISITS:
            raise CorruptFile(
                path,
                f"pickled structure has more than {MAX_NAMING_VISITS} "
                f"references (a shared-reference bomb?)",
            )
        on_path.add(id(value))
        todo.append((None, id(value)))
        for part, child in reversed(kids):
            todo.append((f"{name}.{part}" if name else part, child))


def module_classes(rec: PickleRecord) -> list[str]:
    """Qualnames of the nn.Module classes a pickle instantiates (empty for a state_dict).

    Every object the stream builds is one of the VM's recorded calls, so no walk is needed.
    """
    # state is None for most calls (every tensor rebuild): skip those before the full test
    return sorted(
        {class_name(c) for c in rec.calls if c.state is not None and module_state(c) is not None}
    )


def quantizer_params(call: Call) -> list[Any]:
    """``_rebuild_qtensor``'s quantizer params, e.g. ['torch.per_tensor_affine', 0.1, 3]."""
    params = call.args[4] if len(call.args) > 4 and isinstance(call.args[4], tuple) else ()
    out: list[Any] = []
    for p in params[:3]:
        if isinstance(p, GlobalRef):
            out.append(p.qualname)
        elif isinstance(p, (int, float, str)):
            out.append(p)
        else:
            out.append(type_name(p))  # per-channel scales are tensors: named, not loaded
    return out


def span(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements from the first to one past the last element a view touches."""
    if 0 in shape:
        return 0
    if len(shape) != len(stride):  # not from decode_tensor (which refuses it): zip() semantics
        return 1 + sum((d - 1) * s for d, s in zip(shape, stride))
    # 1 + sum((d - 1) * s), computed with C-level maps
    return 1 + sum(map(operator.mul, shape, stride)) - sum(stride)


_CONTIGUOUS: dict[tuple, bool] = {}  # (shape, stride) -> answer; a model repeats a few shapes


def is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether a view with these dims and element strides is C-contiguous."""
    key = (shape, stride)
    try:
        return _CONTIGUOUS[key]
    except KeyError:
        pass
    except TypeError:  # unhashable (a list from a caller): just compute
        return _is_contiguous(shape, stride)
    answer = _is_contiguous(shape, stride)
    if len(_CONTIGUOUS) >= 4096:  # bounded: shapes come from the file
        _CONTIGUOUS.clear()
    _CONTIGUOUS[key] = answer
    return answer


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def zip_data_offset(src: Source, name: str, fh: BinaryIO | None = None) -> int | None:
    """Absolute offset of a STORED zip member's bytes (None when compressed or missing)."""
    try:
        info = src.zip().getinfo(name)
    except KeyError:
        return None
    if info.compress_type != 0:
        return None
    if fh is None:
        local = src.read_at(info.header_offset, 30)
    else:
        fh.seek(info.header_offset)
        local = fh.read(30)
    return _member_data_start(src, name, info, local)


def _member_data_start(src: Source, name: str, info: Any, local: bytes) -> int:
    """The data offset of a STORED member from its 30-byte local header ``local``."""
    if len(local) != 30:
        raise CorruptFile(
            src.path, f"zip member {name!r}: truncated local header", offset=info.header_offset
        )
    if local[:4] != b"PK\x03\x04":
        raise CorruptFile(
            src.path, f"zip member {name!r}: bad local header", offset=info.header_offset
        )
    n_name, n_extra = struct.unpack_from("<HH", local, 26)
    start = info.header_offset + 30 + n_name + n_extra
    if start + info.file_size > src.size:
        raise CorruptFile(
            src.path, f"zip member {name!r} extends past the end of the file", offset=start
        )
    return start


class _LocalHeaders:
    """Reads 30-byte zip local headers, many per system call.

    A checkpoint's small storages sit close together, so one positioned read of up to
    ``WINDOW`` bytes covers the headers of every member starting in it; a header far from
    the others costs one 30-byte read (never the data between them).
    """

    WINDOW = 64 * 1024

    def __init__(self, path: Path, header_offsets: list[int]):
        self.fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the locator's finalizer
        self.offsets = header_offsets  # sorted
        self.buf = b""
        self.buf_start = -1

    def read(self, offset: int) -> bytes:
        rel = offset - self.buf_start
        if self.buf_start >= 0 and 0 <= rel and rel + 30 <= len(self.buf):
            return self.buf[rel : rel + 30]
        # read through the last header that starts within the window after this one
        i = bisect_right(self.offsets, offset + self.WINDOW - 30) - 1
        end = offset + 30 if i < 0 else max(offset + 30, self.offsets[i] + 30)
        if hasattr(os, "pread"):
            self.buf = os.pread(self.fh.fileno(), end - offset, offset)
        else:  # pragma: no cover - Windows
            self.fh.seek(offset)
            self.buf = self.fh.read(end - offset)
        self.buf_start = offset
        return self.buf[:30]

    def close(self) -> None:
        self.fh.close()


def zip_storage_locator(
    src: Source, prefix: str, folder: str = "data"
) -> Callable[[StorageRef], tuple[int | None, str | None]]:
    """storage -> (absolute offset of its bytes or None when compressed, member name), checking
    that the member ``<prefix><folder>/<key>`` exists and is large enough."""
    cache: dict[str, tuple[int | None, str | None]] = {}
    headers: list[_LocalHeaders] = []  # opened on first use, closed when the locator is collected
    member_prefix = f"{prefix}{folder}/"
    getinfo = src.zip().getinfo if src.zip_names else None  # (zip_names: [] when unreadable)
    itemsize_of = dtypes.ITEMSIZE

    def location(storage: StorageRef) -> tuple[int | None, str | None]:
        key = storage.key
        hit = cache.get(key)
        if hit is not None:
            return hit
        name = member_prefix + key
        try:
            if getinfo is None:
                raise KeyError(name)
            info = getinfo(name)  # the member names are the keys of its directory
        except KeyError:
            raise CorruptFile(src.path, f"storage {key!r} has no member {name!r}") from None
        size = info.file_size
        need = storage.numel * (itemsize_of.get(storage.dtype) or 1)
        if size < need:
            raise CorruptFile(
                src.path, f"member {name!r} holds {size} bytes but its storage needs {need}"
            )
        if info.compress_type != 0:
            start = None
        else:
            if not headers:
                offsets = sorted(i.header_offset for i in src.zip().infolist())
                headers.append(_LocalHeaders(src.path, offsets))
                weakref.finalize(location, headers[0].close)
            start = _member_data_start(src, name, info, headers[0].read(info.header_offset))
        cache[key] = hit = (start, name)
        return hit

    return location


# ---- loading tensor data -----------------------------------------------------------------


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype for a storage dtype (quantized types as their raw integer type)."""
    raw = {"qint8": "int8", "quint8": "uint8", "qint32": "int32", "quint4x2": "uint8"}
    try:
        return dtypes.to_numpy(raw.get(name, name))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"keishiki cannot load {name} tensors as numpy arrays") from exc


def view_from_bytes(
    buf: bytes | memoryview, ref: TensorRef, byteorder: str, first: int = 0
) -> np.ndarray:
    """Apply a tensor's view (offset/shape/stride) to storage bytes; returns a contiguous copy.

    ``first`` is the element index of ``buf``'s first byte within the storage.
    """
    dtype = numpy_dtype(ref.dtype)
    if byteorder == "big" and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    # strided as opaque items, typed after the copy: numpy's as_strided rebuilds the array
    # from its type string, which it cannot parse back for ml_dtypes' float8 ("<f1")
    flat = np.frombuffer(buf, dtype=np.dtype((np.void, dtype.itemsize)))
    start = ref.storage_offset - first
    need = span(ref.shape, ref.stride)
    if start < 0 or start + need > flat.size:
        raise CorruptFile(
            "<storage>",
            f"view needs elements [{ref.storage_offset}, "
            f"{ref.storage_offset + need}) beyond its storage",
        )
    if need == 0:
        return np.zeros(ref.shape, dtype=dtype.newbyteorder("="))
    materialised = math.prod(ref.shape) * dtype.itemsize
    if materialised > max(MAX_EXPANSION_BYTES, 64 * need * dtype.itemsize):
        # zero strides let a tiny storage claim an enormous tensor (an expand() bomb)
        raise CorruptFile(
            "<storage>",
            f"tensor of shape {list(ref.shape)} would take "
            f"{materialised} bytes from {need * dtype.itemsize} stored bytes",
        )
    try:
        arr = np.lib.stride_tricks.as_strided(
            flat[start:], shape=ref.shape, strides=[s * dtype.itemsize for s in ref.stride]
        )
        out = np.array(arr, copy=True, order="C").view(dtype)
    except (MemoryError, ValueError) as exc:
        raise CorruptFile(
            "<storage>",
            f"tensor of shape {list(ref.shape)} cannot be materialised ({type(exc).__name__})",
        ) from None
    if out.dtype.byteorder == ">":
        out = out.astype(out.dtype.newbyteorder("="))
    return out


def apply_flags(arr: np.ndarray, flags: tuple[str, ...], what: str) -> np.ndarray:
    """The values torch gives a tensor saved with its neg/conj bits set (``z.conj().imag``
    is stored un-negated with ``{"neg": True}``): copying the stored bytes would flip signs."""
    for flag in flags:
        if flag == "neg":
            arr = np.negative(arr)
        elif flag == "conj":
            arr = np.conj(arr)
        else:
            raise InvalidRequest(
                f"{what}: torch metadata {flag!r} changes its values in a way keishiki does "
                f"not apply"
            )
    return arr


def loader_for(
    path: Path, refs: dict[str, TensorRef], byteorder: str
) -> Callable[[TensorInfo], np.ndarray]:
    """A loader reading only the bytes a tensor's view spans (never unpickling anything)."""
    path = Path(path)

    def load(info: TensorInfo) -> np.ndarray:
        ref = refs.get(info.name)
        if ref is None or ref.storage is None:
            raise InvalidRequest(f"{path}: tensor {info.name!r} has no stored data (meta tensor)")
        itemsize = numpy_dtype(ref.dtype).itemsize
        need = span(ref.shape, ref.stride)
        if info.data_offset is not None:  # STORED zip member or legacy storage: read the span
            with open(path, "rb") as fh:
                fh.seek(info.data_offset)
                buf = fh.read(need * itemsize)
            if len(buf) != need * itemsize:
                raise CorruptFile(path, f"tensor {info.name!r}: short read", info.data_offset)
            first = ref.storage_offset
        else:
            with Source(path) as src:  # compressed member: inflate it (bounded by its size)
                buf = src.read_member(info.file, max(1, ref.storage.numel * itemsize) + 64)
            first = 0
        try:
            arr = view_from_bytes(buf, ref, byteorder, first=first)
        except CorruptFile as exc:  # name the file and tensor, not the anonymous storage
            raise CorruptFile(path, f"tensor {info.name!r}: {exc.reason}") from None
        return apply_flags(arr, ref.flags, f"{path}: tensor {info.name!r}")

    return load
