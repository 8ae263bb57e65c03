"""pytorch: ``torch.save`` files, the zip archive (torch >= 1.6) and the legacy pickle layout.

Zip: ``<prefix>/data.pkl`` (the pickled object), ``<prefix>/data/<key>`` (one member per
storage, written STORED so it can be memory-mapped), ``version``, and in newer torch
``byteorder``, ``.format_version``, ``.storage_alignment``, ``.data/serialization_id``.
The prefix is ``archive`` in torch >= 2, the file's stem in torch 1.x.

Legacy (``_use_new_zipfile_serialization=False``, and everything before torch 1.6) is five
pickles back to back: the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001,
a ``sys_info`` dict (endianness, C type sizes), the object itself, and the list of storage
keys; then, for each key in that order, an int64 element count and the raw bytes.

Both are read with keishiki's restricted VM (:mod:`keishiki.core.pickle_reader`): tensors
are the ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls it
records, their storages the persistent ids ``('storage', torch.FloatStorage, key,
location, numel)``.  Nothing from the file is imported or run, and no storage bytes are read
until a tensor is loaded.
"""

from __future__ import annotations

import math
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from ..core import dtypes
from ..core.model import ModelInfo
from ..core.pickle_reader import (
    Call, GlobalRef, OpaqueKey, PersistentId, PickleRecord, read_pickle, type_name,
)
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile, InvalidRequest

FORMAT = "pytorch"
TORCH_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
MAX_PICKLE_BYTES = 256 * 1024 * 1024  # a data.pkl beyond 256 MiB is not a checkpoint's metadata
# ~30 opcodes per tensor: 10 M allows ~300 k tensors, and bounds a hostile stream to seconds
MAX_OPS = 10_000_000
MAX_LEGACY_PICKLE_BYTES = 256 * 1024 * 1024
MAX_NAMING_VISITS = 5_000_000

# the functions torch pickles a tensor as; arguments start (storage, storage_offset, size, stride)
REBUILD_TENSOR = {
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_qtensor", "torch._utils._rebuild_tensor_v3",
}
REBUILD_WRAPPERS = {  # first argument is the tensor itself
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
}
REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"  # (func, new_type, args, state)
REBUILD_META = "torch._utils._rebuild_meta_tensor_no_storage"  # (dtype, size, stride, ...)
MAPPING_TYPES = {"collections.OrderedDict", "builtins.dict", "__builtin__.dict"}
# top-level keys that mark a training checkpoint rather than a bare state_dict
CHECKPOINT_KEYS = {
    "optimizer", "optimizer_state_dict", "optimizer_states", "optimizers", "epoch", "epochs",
    "global_step", "step", "iteration", "iter", "model", "model_state_dict", "state_dict",
    "net", "scheduler", "lr_scheduler", "lr_schedulers", "ema", "model_ema", "ema_state_dict",
    "args", "config", "hyper_parameters", "hparams", "best_acc", "best_loss", "loss", "amp",
    "scaler", "pytorch-lightning_version", "callbacks", "loops", "opt", "train_state",
}
MODULE_NOTE = (
    "a whole pickled nn.Module: a PyTorch model is an instance of a Python class that "
    "subclasses torch.nn.Module, and the pickle names that class instead of holding its code; "
    "loading it needs the class's source importable and torch.load(weights_only=False), which "
    "runs whatever the pickle names. The weights are the module's state_dict, listed here.")


# ---- sniffing ------------------------------------------------------------------------------

def data_pkl_member(names: list[str]) -> str | None:
    """The ``[<prefix>/]data.pkl`` member of a torch zip (shortest path wins), else None."""
    found = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    return min(found, key=len) if found else None


def is_torchscript_names(names: list[str]) -> bool:
    """TorchScript archives add ``<prefix>/code/`` and ``<prefix>/constants.pkl``."""
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n or
                                                                   n.startswith("code/")
                                                                   for n in names)


def is_export_names(names: list[str]) -> bool:
    return any("serialized_exported_program" in n or n.endswith("archive_format") for n in names)


def _magic_bytes() -> list[bytes]:
    body = TORCH_MAGIC.to_bytes(10, "little", signed=True)
    return [b"\x8a\x0a" + body]


def sniff(src: Source):
    from . import Match

    if src.is_dir:
        return None
    if src.looks_like_zip:
        names = src.zip_names
        if data_pkl_member(names) and not is_torchscript_names(names) and not is_export_names(names):
            return Match(FORMAT, "zip", reason="zip archive with data.pkl (torch.save)")
        return None
    head = src.head
    if head[:1] == b"\x80" and any(m in head[:64] for m in _magic_bytes()):
        try:
            rec = read_pickle(head, 0, max_ops=64)
        except CorruptFile:
            return None
        if rec.value == TORCH_MAGIC:
            return Match(FORMAT, "legacy", reason="pickle starting with torch's magic number")
    return None


# ---- tensors inside a pickle ---------------------------------------------------------------

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


def _ints(value: Any, what: str, path: str) -> tuple[int, ...]:
    if isinstance(value, Call) and value.args:  # torch.Size((2, 3)) when pickled as a call
        value = value.args[0]
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise CorruptFile(path, f"tensor {what} is not a tuple of ints")
    if len(value) > 64 or any(v < 0 for v in value):
        raise CorruptFile(path, f"tensor {what} {list(value)[:8]} is out of range")
    return tuple(value)


def storage_dtype(ref: Any) -> str | None:
    """``torch.FloatStorage`` / ``torch.float16`` / ``torch.UntypedStorage`` -> dtype name."""
    if not isinstance(ref, GlobalRef) or ref.module != "torch":
        return None
    if ref.name in ("UntypedStorage", "ByteStorage"):
        return "uint8"
    return dtypes.from_torch_storage(ref.name) or dtypes.from_torch_dtype(ref.name)


def decode_storage(pid: Any, path: str) -> StorageRef:
    """``('storage', type, key, location, numel[, view_metadata])`` -> StorageRef."""
    tup = pid.pid if isinstance(pid, PersistentId) else None
    if not isinstance(tup, tuple) or len(tup) < 5 or tup[0] != "storage":
        raise CorruptFile(path, f"unexpected persistent id {type(tup).__name__} "
                          f"(not a torch storage reference)")
    _, stype, key, location, numel = tup[:5]
    dtype = storage_dtype(stype)
    if dtype is None:
        raise CorruptFile(path, f"storage {key!r}: unknown storage type "
                          f"{getattr(stype, 'qualname', type(stype).__name__)}")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise CorruptFile(path, f"storage {key!r}: malformed key or size")
    view_offset = 0
    if len(tup) > 5 and isinstance(tup[5], tuple) and len(tup[5]) == 3:
        # legacy storage view: (view_key, offset, size) of the root storage `key`
        _view_key, view_offset, numel = tup[5]
        if type(view_offset) is not int or type(numel) is not int or view_offset < 0:
            raise CorruptFile(path, f"storage {key!r}: malformed view metadata")
    return StorageRef(key, dtype, numel, str(location), view_offset)


def decode_tensor(call: Call, path: str) -> TensorRef | None:
    """The tensor a rebuild call would make, or None when ``call`` is not a tensor rebuild."""
    name = call.qualname
    args = call.args
    if name in REBUILD_WRAPPERS and args and isinstance(args[0], Call):
        inner = decode_tensor(args[0], path)
        return None if inner is None else TensorRef(**{**inner.__dict__, "kind": "parameter"})
    if name == REBUILD_FROM_TYPE and len(args) >= 3 and isinstance(args[2], tuple):
        inner_call = Call(args[0], args[2], None, call.offset, call.opcode)
        inner = decode_tensor(inner_call, path)
        return None if inner is None else TensorRef(**{**inner.__dict__, "kind": "subclass"})
    if name == REBUILD_META and len(args) >= 3:
        dtype = storage_dtype(args[0]) or "float32"
        return TensorRef(None, dtype, 0, _ints(args[1], "size", path),
                         _ints(args[2], "stride", path), "meta")
    if name not in REBUILD_TENSOR or len(args) < 4:
        return None
    storage = decode_storage(args[0], path)
    offset = args[1]
    if type(offset) is not int or offset < 0:
        raise CorruptFile(path, "tensor storage_offset is not a non-negative int")
    shape, stride = _ints(args[2], "size", path), _ints(args[3], "stride", path)
    if len(shape) != len(stride):
        raise CorruptFile(path, f"tensor size {list(shape)} and stride {list(stride)} differ "
                          f"in length")
    kind = "quantized" if name.endswith("qtensor") else "tensor"
    return TensorRef(storage, storage.dtype, offset + storage.view_offset, shape, stride, kind)


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
    if isinstance(func, PersistentId) and isinstance(func.pid, tuple) and len(func.pid) > 1 \
            and func.pid[0] == "module" and isinstance(func.pid[1], GlobalRef):
        return func.pid[1].qualname
    return call.qualname


def module_state(value: Any) -> dict | None:
    """The attribute dict of a pickled nn.Module (state with _parameters/_modules), else None."""
    if isinstance(value, Call) and isinstance(value.state, dict) and \
            "_modules" in value.state and "_parameters" in value.state:
        return value.state
    return None


def _key_text(key: Any) -> str:
    if isinstance(key, OpaqueKey):
        return repr(key)
    return key if isinstance(key, str) else str(key)


def _children(value: Any) -> list[tuple[str, Any]]:
    """(name part, child) pairs used to name tensors by their place in the structure."""
    state = module_state(value)
    if state is not None:
        out: list[tuple[str, Any]] = []
        for group in ("_parameters", "_buffers", "_modules"):
            out.extend((_key_text(k), v) for k, v in mapping_items(state.get(group)) or [])
        out.extend((k, v) for k, v in state.items() if isinstance(k, str) and not k.startswith("_")
                   and k != "training")
        return out
    items = mapping_items(value)
    if items is not None:
        return [(_key_text(k), v) for k, v in items]
    if isinstance(value, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(value)]
    if isinstance(value, Call):
        out = []
        if isinstance(value.state, dict):
            out.extend((_key_text(k), v) for k, v in value.state.items())
        elif value.state is not None:
            out.append(("state", value.state))
        out.extend((_key_text(k), v) for k, v in (value.dictitems or {}).items())
        out.extend((str(i), v) for i, v in enumerate(value.listitems or []))
        if not out:
            out.extend((str(i), v) for i, v in enumerate(value.args))
        return out
    return []


def walk_tensors(root: Any, path: str) -> Iterator[tuple[str, Call, TensorRef]]:
    """Every tensor reachable from ``root`` as (dotted name, call, decoded), in pickle order.

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
        if isinstance(value, Call):
            ref = decode_tensor(value, path)
            if ref is not None:
                yield name, value, ref
                continue
        kids = _children(value)
        if not kids or id(value) in on_path:
            continue
        visits += len(kids)
        if visits > MAX_NAMING_VISITS:
            raise CorruptFile(path, f"pickled structure has more than {MAX_NAMING_VISITS} "
                              f"references (a shared-reference bomb?)")
        on_path.add(id(value))
        todo.append((None, id(value)))
        for part, child in reversed(kids):
            todo.append((f"{name}.{part}" if name else part, child))


def module_classes(rec: PickleRecord) -> list[str]:
    """Qualnames of the nn.Module classes a pickle instantiates (empty for a state_dict).

    Every object the stream builds is one of the VM's recorded calls, so no walk is needed.
    """
    return sorted({class_name(c) for c in rec.calls if module_state(c) is not None})


def classify(root: Any, names: list[str], modules: list[str]) -> tuple[str, list[str]]:
    """(kind, checkpoint keys): tensor / module / checkpoint / state_dict / other."""
    if isinstance(root, Call) and root.qualname in REBUILD_TENSOR | REBUILD_WRAPPERS | {
            REBUILD_FROM_TYPE, REBUILD_META} and names == [""]:
        return "tensor", []
    if module_state(root) is not None:
        return "module", []
    items = mapping_items(root)
    if items is None:  # a list/tuple/custom object holding tensors: not a known layout
        return "other", []
    top = [k for k, _ in items if isinstance(k, str)]
    hits = [k for k in top if k in CHECKPOINT_KEYS]
    if hits or modules:
        return "checkpoint", hits
    top_set = set(top)
    if names and all("." not in n or n in top_set for n in names):
        return "state_dict", []
    return ("checkpoint" if names else "other"), []


# ---- reading ---------------------------------------------------------------------------------

@dataclass
class _Parsed:
    record: PickleRecord
    tensors: list[TensorInfo]
    refs: dict[str, TensorRef]
    details: dict[str, Any]


def parse_object(rec: PickleRecord, path: str,
                 storage_location: Callable[[StorageRef], tuple[int | None, str | None]]
                 ) -> _Parsed:
    """Tensors (named by structure) and the common pytorch details of one main pickle.

    ``storage_location(storage)`` gives (absolute byte offset of the storage's first byte
    or None, file/member name or None) for TensorInfo.data_offset / file.
    """
    found = list(walk_tensors(rec.value, path))
    names = [n for n, _, _ in found]
    modules = module_classes(rec)
    kind, ckpt_keys = classify(rec.value, names, modules)
    tensors: list[TensorInfo] = []
    refs: dict[str, TensorRef] = {}
    by_storage: dict[str, list[str]] = {}
    for name, _call, ref in found:
        name = name or "tensor"
        itemsize = dtypes.itemsize(ref.dtype) or 1
        numel = math.prod(ref.shape)
        extra: dict[str, Any] = {"stride": list(ref.stride), "storage_offset": ref.storage_offset}
        offset = member = None
        if ref.storage is not None:
            extra["storage_key"] = ref.storage.key
            extra["storage_numel"] = ref.storage.numel
            extra["device"] = ref.storage.location
            by_storage.setdefault(ref.storage.key, []).append(name)
            start, member = storage_location(ref.storage)
            if start is not None:
                offset = start + ref.storage_offset * itemsize
            used = ref.storage_offset - ref.storage.view_offset + _span(ref.shape, ref.stride)
            if numel and used > ref.storage.numel:
                raise CorruptFile(path, f"tensor {name!r}: view {list(ref.shape)} stride "
                                  f"{list(ref.stride)} at offset {ref.storage_offset} overruns "
                                  f"its storage of {ref.storage.numel} elements")
        else:
            extra["device"] = "meta"
        if not is_contiguous(ref.shape, ref.stride):
            extra["contiguous"] = False
        if ref.kind != "tensor":
            extra["tensor_kind"] = ref.kind
        if ref.kind == "quantized":
            extra["quantizer"] = _quantizer(_call)
        tensors.append(TensorInfo(name, ref.dtype, ref.shape, numel * itemsize, offset, member,
                                  extra))
        refs[name] = ref
    items = mapping_items(rec.value)
    top_keys = [_key_text(k) for k, _ in items] if items is not None else []
    details: dict[str, Any] = {
        "kind": kind,
        "pickle_protocol": rec.protocol,
        "globals": sorted({g.qualname for g in rec.globals}),
        "root_type": class_name(rec.value) if isinstance(rec.value, Call) else type_name(rec.value),
        "n_top_keys": len(top_keys),
        "top_keys": top_keys[:100],
        "n_storages": len(by_storage),
        "shared_storages": [{"storage_key": k, "tensors": v} for k, v in by_storage.items()
                            if len(v) > 1],
        "python2_pickle": rec.py2_strings,
    }
    if ckpt_keys:
        details["checkpoint_keys"] = ckpt_keys
    if modules:
        details["module_classes"] = modules
        details["loading"] = MODULE_NOTE
    return _Parsed(rec, tensors, refs, details)


def _quantizer(call: Call) -> list[Any]:
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


def _span(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements from the first to one past the last element a view touches."""
    if any(d == 0 for d in shape):
        return 0
    return 1 + sum((d - 1) * s for d, s in zip(shape, stride))


def is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
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
    if len(local) != 30:
        raise CorruptFile(src.path, f"zip member {name!r}: truncated local header",
                          offset=info.header_offset)
    if local[:4] != b"PK\x03\x04":
        raise CorruptFile(src.path, f"zip member {name!r}: bad local header",
                          offset=info.header_offset)
    n_name, n_extra = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + n_name + n_extra
    if start + info.file_size > src.size:
        raise CorruptFile(src.path, f"zip member {name!r} extends past the end of the file",
                          offset=start)
    return start


def zip_storage_locator(src: Source, prefix: str, folder: str = "data"
                        ) -> Callable[[StorageRef], tuple[int | None, str | None]]:
    """storage -> (absolute offset of its bytes or None when compressed, member name), checking
    that the member ``<prefix><folder>/<key>`` exists and is large enough."""
    members = set(src.zip_names)
    cache: dict[str, tuple[int | None, str | None]] = {}
    handle: list[BinaryIO] = []  # opened on first use, closed when the locator is collected

    def location(storage: StorageRef) -> tuple[int | None, str | None]:
        if storage.key not in cache:
            name = f"{prefix}{folder}/{storage.key}"
            if name not in members:
                raise CorruptFile(src.path, f"storage {storage.key!r} has no member {name!r}")
            size = src.zip().getinfo(name).file_size
            need = storage.numel * (dtypes.itemsize(storage.dtype) or 1)
            if size < need:
                raise CorruptFile(src.path, f"member {name!r} holds {size} bytes but its "
                                  f"storage needs {need}")
            if not handle:
                handle.append(open(src.path, "rb"))  # noqa: SIM115 - closed by the finalizer
                weakref.finalize(location, handle[0].close)
            cache[storage.key] = (zip_data_offset(src, name, handle[0]), name)
        return cache[storage.key]

    return location


def read_zip(src: Source, match) -> ModelInfo:
    names = src.zip_names
    member = data_pkl_member(names)
    if member is None:
        raise CorruptFile(src.path, "zip archive has no data.pkl")
    prefix = member[: -len("data.pkl")]
    where = f"{src.path}:{member}"
    rec = read_pickle(src.read_member(member, MAX_PICKLE_BYTES), path=where, max_ops=MAX_OPS)
    members = set(names)
    location = zip_storage_locator(src, prefix)
    parsed = parse_object(rec, where, location)
    details = parsed.details
    details["container"] = "zip"
    details["archive_prefix"] = prefix.rstrip("/")
    details["byteorder"] = _small_text(src, f"{prefix}byteorder") or "little"
    details["has_byteorder"] = f"{prefix}byteorder" in members
    version = _small_text(src, f"{prefix}version") or _small_text(src, f"{prefix}.data/version")
    details["version_record"] = version
    details["format_version_record"] = _small_text(src, f"{prefix}.format_version")
    details["storage_alignment"] = _small_text(src, f"{prefix}.storage_alignment")
    details["has_serialization_id"] = f"{prefix}.data/serialization_id" in members
    details["n_records"] = len(names)
    return ModelInfo(path=str(src.path), format=FORMAT, variant="zip", format_version=version,
                     tensors=parsed.tensors, details={FORMAT: details},
                     warnings=_warnings(details),
                     tensor_loader=loader_for(src.path, parsed.refs, details["byteorder"]))


def _small_text(src: Source, name: str) -> str | None:
    if name not in set(src.zip_names):
        return None
    return src.read_member(name, 4096).decode("utf-8", "replace").strip()


def _warnings(details: dict[str, Any]) -> list[str]:
    out = []
    if details.get("module_classes"):
        out.append("whole pickled nn.Module (" + ", ".join(details["module_classes"][:5]) +
                   "): loading it runs code; use its state_dict")
    return out


def read_legacy(src: Source, match) -> ModelInfo:
    path = str(src.path)
    # the pickles' total size is unknown up front (the storages follow the last one): read
    # the start of the file, and more only while the failure is "ran out of bytes"
    limit = min(src.size, MAX_LEGACY_PICKLE_BYTES)
    data = src.read_at(0, min(limit, 4 * 1024 * 1024), exact=False)
    while True:
        try:
            recs = _legacy_pickles(data, path)
            break
        except CorruptFile as exc:
            short = "truncated" in exc.reason or "bytes but only" in exc.reason
            if not short or len(data) >= limit:
                raise
            data = src.read_at(0, min(limit, len(data) * 8), exact=False)
    magic, proto_version, sys_info, main, keys_rec = recs
    if proto_version.value != LEGACY_PROTOCOL_VERSION:
        raise CorruptFile(path, f"legacy protocol version {proto_version.value!r} is not "
                          f"{LEGACY_PROTOCOL_VERSION}", offset=proto_version.start)
    keys = keys_rec.value
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CorruptFile(path, "storage key list is not a list of strings", offset=keys_rec.start)
    info_dict = sys_info.value if isinstance(sys_info.value, dict) else {}
    little = info_dict.get("little_endian", True) is not False
    dtype_of: dict[str, str] = {}
    for pid in main.persistent_ids:
        if _legacy_module_pid(pid) is not None:
            continue
        storage = decode_storage(pid, path)
        dtype_of.setdefault(storage.key, storage.dtype)
    starts = _legacy_storage_offsets(src, keys, dtype_of, keys_rec.end, little)

    def location(storage: StorageRef) -> tuple[int | None, str | None]:
        if storage.key not in starts:
            raise CorruptFile(path, f"storage {storage.key!r} is not in the storage key list")
        return starts[storage.key], None

    parsed = parse_object(main, path, location)
    details = parsed.details
    details.update({
        "container": "legacy",
        "magic_number": hex(magic.value),
        "protocol_version": proto_version.value,
        "sys_info": info_dict,
        "byteorder": "little" if little else "big",
        "n_storages": len(keys),
    })
    sources = _legacy_module_sources(main)
    if sources:
        details["module_sources"] = sources
    return ModelInfo(path=path, format=FORMAT, variant="legacy",
                     format_version=str(LEGACY_PROTOCOL_VERSION), tensors=parsed.tensors,
                     details={FORMAT: details}, warnings=_warnings(details),
                     tensor_loader=loader_for(src.path, parsed.refs, details["byteorder"]))


def _legacy_module_pid(pid: Any) -> tuple | None:
    """Legacy saves of whole modules reference each nn.Module class as the persistent id
    ``('module', class, source_file, source_text)``: the class's source rides along."""
    tup = pid.pid if isinstance(pid, PersistentId) else None
    if isinstance(tup, tuple) and len(tup) == 4 and tup[0] == "module":
        return tup
    return None


def _legacy_module_sources(rec: PickleRecord) -> list[dict[str, Any]]:
    out = []
    for pid in rec.persistent_ids:
        tup = _legacy_module_pid(pid)
        if tup is not None:
            out.append({"class": getattr(tup[1], "qualname", str(tup[1])),
                        "source_file": str(tup[2]),
                        "source_lines": str(tup[3]).count("\n")})
    return out


def _legacy_pickles(data: bytes, path: str) -> list[PickleRecord]:
    view = memoryview(data)
    recs, pos = [], 0
    for what in ("magic number", "protocol version", "sys_info", "object", "storage keys"):
        try:
            rec = read_pickle(view, pos, path=path, max_ops=MAX_OPS)
        except CorruptFile as exc:
            raise CorruptFile(path, f"legacy {what} pickle: {exc.reason}", exc.offset) from None
        recs.append(rec)
        pos = rec.end
    if recs[0].value != TORCH_MAGIC:
        raise CorruptFile(path, "legacy file does not start with torch's magic number", 0)
    return recs


def _legacy_storage_offsets(src: Source, keys: list[str], dtype_of: dict[str, str], pos: int,
                            little: bool) -> dict[str, int]:
    """Byte offset of each storage's data: per key, an int64 element count then the bytes."""
    starts: dict[str, int] = {}
    fmt = "<q" if little else ">q"
    with open(src.path, "rb") as fh:  # one handle for thousands of 8-byte reads
        for key in keys:
            if key not in dtype_of:
                raise CorruptFile(src.path, f"storage {key!r} is listed but no tensor uses it "
                                  f"(its element size is unknown)", offset=pos)
            fh.seek(pos)
            raw = fh.read(8)
            if len(raw) != 8:
                raise CorruptFile(src.path, f"storage {key!r}: file ends in its header",
                                  offset=pos)
            (numel,) = struct.unpack(fmt, raw)
            nbytes = numel * (dtypes.itemsize(dtype_of[key]) or 1)
            if numel < 0 or pos + 8 + nbytes > src.size:
                raise CorruptFile(src.path, f"storage {key!r} of {numel} elements runs past "
                                  f"the end of the file", offset=pos)
            starts[key] = pos + 8
            pos += 8 + nbytes
    return starts


def read(src: Source, match) -> ModelInfo:
    """The tensors, names and pickle facts of a torch.save file (zip or legacy)."""
    if match.variant == "legacy":
        return read_legacy(src, match)
    return read_zip(src, match)


# ---- loading tensor data -----------------------------------------------------------------

def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype for a storage dtype (quantized types as their raw integer type)."""
    raw = {"qint8": "int8", "quint8": "uint8", "qint32": "int32", "quint4x2": "uint8"}
    try:
        return dtypes.to_numpy(raw.get(name, name))
    except (KeyError, TypeError) as exc:
        raise InvalidRequest(f"keishiki cannot load {name} tensors as numpy arrays") from exc


def view_from_bytes(buf: bytes | memoryview, ref: TensorRef, byteorder: str,
                    first: int = 0) -> np.ndarray:
    """Apply a tensor's view (offset/shape/stride) to storage bytes; returns a contiguous copy.

    ``first`` is the element index of ``buf``'s first byte within the storage.
    """
    dtype = numpy_dtype(ref.dtype)
    if byteorder == "big" and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    flat = np.frombuffer(buf, dtype=dtype)
    start = ref.storage_offset - first
    need = _span(ref.shape, ref.stride)
    if start < 0 or start + need > flat.size:
        raise CorruptFile("<storage>", f"view needs elements [{ref.storage_offset}, "
                          f"{ref.storage_offset + need}) beyond its storage")
    if need == 0:
        return np.zeros(ref.shape, dtype=dtype.newbyteorder("="))
    arr = np.lib.stride_tricks.as_strided(flat[start:], shape=ref.shape,
                                          strides=[s * dtype.itemsize for s in ref.stride])
    out = np.array(arr, copy=True, order="C")
    if out.dtype.byteorder == ">":
        out = out.astype(out.dtype.newbyteorder("="))
    return out


def loader_for(path: Path, refs: dict[str, TensorRef], byteorder: str
               ) -> Callable[[TensorInfo], np.ndarray]:
    """A loader reading only the bytes a tensor's view spans (never unpickling anything)."""
    path = Path(path)

    def load(info: TensorInfo) -> np.ndarray:
        ref = refs.get(info.name)
        if ref is None or ref.storage is None:
            raise InvalidRequest(f"{path}: tensor {info.name!r} has no stored data "
                                 f"(meta tensor)")
        itemsize = numpy_dtype(ref.dtype).itemsize
        need = _span(ref.shape, ref.stride)
        if info.data_offset is not None:  # STORED zip member or legacy storage: read the span
            with open(path, "rb") as fh:
                fh.seek(info.data_offset)
                buf = fh.read(need * itemsize)
            if len(buf) != need * itemsize:
                raise CorruptFile(path, f"tensor {info.name!r}: short read", info.data_offset)
            return view_from_bytes(buf, ref, byteorder, first=ref.storage_offset)
        with Source(path) as src:  # compressed member: inflate it (bounded by its size)
            data = src.read_member(info.file, max(1, ref.storage.numel * itemsize) + 64)
        return view_from_bytes(data, ref, byteorder)

    return load
