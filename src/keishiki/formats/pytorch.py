"""pytorch: ``torch.save`` files, the zip archive (torch >= 1.6) and the legacy pickle layout.

Zip: ``<prefix>/data.pkl`` (the pickled object), ``<prefix>/data/<key>`` (one member per
storage, written STORED so it can be memory-mapped), ``version``, and in newer torch
``byteorder``, ``.format_version``, ``.storage_alignment``, ``.data/serialization_id``.
The prefix is ``archive`` in torch >= 2, the file's stem in torch 1.x.

Legacy (``_use_new_zipfile_serialization=False``, and everything before torch 1.6) is five
pickles back to back: the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001,
a ``sys_info`` dict (endianness, C type sizes), the object itself, and the list of storage
keys; then, for each key in that order, an int64 element count and the raw bytes.

Both are read into the restricted VM's records (:mod:`keishiki.core.pickle_reader`; the
scan's inert C reading is shared and converted when it is clean, see
:func:`._torch_pickle.read_torch_pickle`): tensors are the
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls it records, their storages the persistent ids ``('storage', torch.FloatStorage, key,
location, numel)``.  Nothing from the file is imported or run, and no storage bytes are read
until a tensor is loaded.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Callable

from ..core import dtypes
from ..core.model import ModelInfo
from ..core.pickle_reader import Call, PersistentId, PickleRecord, read_pickle, type_name
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from ._torch_pickle import (
    REBUILD_FROM_TYPE,
    REBUILD_META,
    REBUILD_TENSOR,
    REBUILD_WRAPPERS,
    StateDictReading,
    StorageRef,
    TensorRef,
    class_name,
    decode_storage,
    is_contiguous,
    key_text,
    loader_for,
    mapping_items,
    module_classes,
    module_state,
    plain_value,
    quantizer_params,
    read_torch_object,
    span,
    walk_tensors,
    zip_storage_locator,
)
from .registry import Match

FORMAT = "pytorch"
TORCH_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
MAX_PICKLE_BYTES = 256 * 1024 * 1024  # a data.pkl beyond 256 MiB is not a checkpoint's metadata
# ~30 opcodes per tensor: 10 M allows ~300 k tensors, and bounds a hostile stream to seconds
MAX_OPS = 10_000_000
MAX_LEGACY_PICKLE_BYTES = 256 * 1024 * 1024
# top-level keys that mark a training checkpoint rather than a bare state_dict
CHECKPOINT_KEYS = {
    "optimizer",
    "optimizer_state_dict",
    "optimizer_states",
    "optimizers",
    "epoch",
    "epochs",
    "global_step",
    "step",
    "iteration",
    "iter",
    "model",
    "model_state_dict",
    "state_dict",
    "net",
    "scheduler",
    "lr_scheduler",
    "lr_schedulers",
    "ema",
    "model_ema",
    "ema_state_dict",
    "args",
    "config",
    "hyper_parameters",
    "hparams",
    "best_acc",
    "best_loss",
    "loss",
    "amp",
    "scaler",
    "pytorch-lightning_version",
    "callbacks",
    "loops",
    "opt",
    "train_state",
}
MODULE_NOTE = (
    "a whole pickled nn.Module: a PyTorch model is an instance of a Python class that "
    "subclasses torch.nn.Module, and the pickle names that class instead of holding its code; "
    "loading it needs the class's source importable and torch.load(weights_only=False), which "
    "runs whatever the pickle names. The weights are the module's state_dict, listed here."
)


# ---- sniffing ------------------------------------------------------------------------------


def data_pkl_member(names: list[str]) -> str | None:
    """The ``[<prefix>/]data.pkl`` member of a torch zip (shortest path wins), else None."""
    found = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    return min(found, key=len) if found else None


def is_torchscript_names(names: list[str]) -> bool:
    """TorchScript archives add ``<prefix>/code/`` and ``<prefix>/constants.pkl``."""
    return any(n.endswith("constants.pkl") for n in names) and any(
        "/code/" in n or n.startswith("code/") for n in names
    )


def is_export_names(names: list[str]) -> bool:
    return any("serialized_exported_program" in n or n.endswith("archive_format") for n in names)


def _magic_bytes() -> list[bytes]:
    body = TORCH_MAGIC.to_bytes(10, "little", signed=True)
    return [b"\x8a\x0a" + body]


def sniff(src: Source) -> Match | None:
    if src.is_dir:
        return None
    if src.looks_like_zip:
        names = src.zip_names
        if (
            data_pkl_member(names)
            and not is_torchscript_names(names)
            and not is_export_names(names)
        ):
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


def classify(root: Any, names: list[str], modules: list[str]) -> tuple[str, list[str]]:
    """(kind, checkpoint keys): tensor / module / checkpoint / state_dict / other."""
    if (
        isinstance(root, Call)
        and root.qualname in REBUILD_TENSOR | REBUILD_WRAPPERS | {REBUILD_FROM_TYPE, REBUILD_META}
        and names == [""]
    ):
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
    tensors: list[TensorInfo]
    refs: dict[str, TensorRef]
    details: dict[str, Any]


def parse_object(
    rec: PickleRecord | StateDictReading,
    path: str,
    storage_location: Callable[[StorageRef], tuple[int | None, str | None]],
) -> _Parsed:
    """Tensors (named by structure) and the common pytorch details of one main pickle.

    ``storage_location(storage)`` gives (absolute byte offset of the storage's first byte
    or None, file/member name or None) for TensorInfo.data_offset / file.
    """
    if isinstance(rec, StateDictReading):  # a plain state_dict: its tensors are read
        found: list[tuple[str, Any, TensorRef]] = rec.found
        root: Any = dict.fromkeys(rec.keys)  # what classify looks at: the keys
        modules: list[str] = []
        kind, ckpt_keys = classify(root, [n for n, _, _ in found], modules)
        top_keys, root_type = rec.keys, rec.root_type
        protocol, global_names, py2 = rec.protocol, rec.global_names, False
    else:
        found = list(walk_tensors(rec.value, path))
        modules = module_classes(rec)
        kind, ckpt_keys = classify(rec.value, [n for n, _, _ in found], modules)
        items = mapping_items(rec.value)
        top_keys = [key_text(k) for k, _ in items] if items is not None else []
        root_type = class_name(rec.value) if isinstance(rec.value, Call) else type_name(rec.value)
        protocol, py2 = rec.protocol, rec.py2_strings
        global_names = sorted({g.qualname for g in rec.globals})
    tensors: list[TensorInfo] = []
    refs: dict[str, TensorRef] = {}
    by_storage: dict[str, list[str]] = {}
    itemsize_of = dtypes.ITEMSIZE  # per-tensor loop: plain dict and local lookups
    new = object.__new__
    for name, call, ref in found:
        name = name or "tensor"
        dtype, shape, stride, storage_offset = ref.dtype, ref.shape, ref.stride, ref.storage_offset
        itemsize = itemsize_of.get(dtype) or 1
        numel = math.prod(shape)
        extra: dict[str, Any] = {"stride": list(stride), "storage_offset": storage_offset}
        offset = member = None
        storage = ref.storage
        if storage is not None:
            key = storage.key
            extra["storage_key"] = key
            extra["storage_numel"] = storage.numel
            extra["device"] = storage.location
            sharing = by_storage.get(key)
            if sharing is None:
                by_storage[key] = [name]
            else:
                sharing.append(name)
            start, member = storage_location(storage)
            if start is not None:
                offset = start + storage_offset * itemsize
            used = storage_offset - storage.view_offset + span(shape, stride)
            if numel and used > storage.numel:
                raise CorruptFile(
                    path,
                    f"tensor {name!r}: view {list(shape)} stride "
                    f"{list(stride)} at offset {storage_offset} overruns "
                    f"its storage of {storage.numel} elements",
                )
        else:
            extra["device"] = "meta"
        if not is_contiguous(shape, stride):
            extra["contiguous"] = False
        if ref.kind != "tensor":
            extra["tensor_kind"] = ref.kind
        if ref.flags:  # neg/conj bits: the loader applies them; bytes are not the values
            extra["torch_flags"] = list(ref.flags)
        if ref.kind == "quantized":
            extra["quantizer"] = quantizer_params(call)
        info = new(TensorInfo)  # TensorInfo(...) without the frozen dataclass's __setattr__s
        info.__dict__.update(
            name=name,
            dtype=dtype,
            shape=shape,
            nbytes=numel * itemsize,
            data_offset=offset,
            file=member,
            extra=extra,
        )
        tensors.append(info)
        refs[name] = ref
    details: dict[str, Any] = {
        "kind": kind,
        "pickle_protocol": protocol,
        "globals": global_names,
        "root_type": root_type,
        "n_top_keys": len(top_keys),
        "top_keys": top_keys[:100],
        "n_storages": len(by_storage),
        "shared_storages": [
            {"storage_key": k, "tensors": v} for k, v in by_storage.items() if len(v) > 1
        ],
        "python2_pickle": py2,
    }
    if ckpt_keys:
        details["checkpoint_keys"] = ckpt_keys
    if modules:
        details["module_classes"] = modules
        details["loading"] = MODULE_NOTE
    return _Parsed(tensors, refs, details)


def read_zip(src: Source, match) -> ModelInfo:
    names = src.zip_names
    member = data_pkl_member(names)
    if member is None:
        raise CorruptFile(src.path, "zip archive has no data.pkl")
    prefix = member[: -len("data.pkl")]
    where = f"{src.path}:{member}"
    data = src.read_member(member, MAX_PICKLE_BYTES)
    rec = read_torch_object(data, path=where, max_ops=MAX_OPS)
    from .._scan.archives import share_directory  # noqa: PLC0415 - keeps scan out of import

    share_directory(src.path, src.zip().infolist())  # the scan that follows takes it
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
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        variant="zip",
        format_version=version,
        tensors=parsed.tensors,
        details={FORMAT: details},
        warnings=_warnings(details),
        tensor_loader=loader_for(src.path, parsed.refs, details["byteorder"]),
    )


def _small_text(src: Source, name: str) -> str | None:
    if not _has_member(src, name):
        return None
    return src.read_member(name, 4096).decode("utf-8", "replace").strip()


def _warnings(details: dict[str, Any]) -> list[str]:
    out = []
    if details.get("module_classes"):
        out.append(
            "whole pickled nn.Module ("
            + ", ".join(details["module_classes"][:5])
            + "): loading it runs code; use its state_dict"
        )
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
        raise CorruptFile(
            path,
            f"legacy protocol version {proto_version.value!r} is not {LEGACY_PROTOCOL_VERSION}",
            offset=proto_version.start,
        )
    keys = keys_rec.value
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CorruptFile(path, "storage key list is not a list of strings", offset=keys_rec.start)
    info_dict = sys_info.value if isinstance(sys_info.value, dict) else {}
    little = info_dict.get("little_endian", True) is not False
    dtype_of: dict[str, str] = {}
    if isinstance(main, StateDictReading):
        for storage in main.storages:
            dtype_of.setdefault(storage.key, storage.dtype)
    else:
        for pid in main.persistent_ids:
            if _legacy_module_pid(pid) is not None:
                continue
            storage = decode_storage(pid, path)
            dtype_of.setdefault(storage.key, storage.dtype)
    starts = _legacy_storage_offsets(src, keys, dtype_of, keys_rec.end, little, data)

    def location(storage: StorageRef) -> tuple[int | None, str | None]:
        if storage.key not in starts:
            raise CorruptFile(path, f"storage {storage.key!r} is not in the storage key list")
        return starts[storage.key], None

    parsed = parse_object(main, path, location)
    details = parsed.details
    details.update(
        {
            "container": "legacy",
            "magic_number": hex(magic.value),
            "protocol_version": proto_version.value,
            "sys_info": plain_value(info_dict),
            "byteorder": "little" if little else "big",
            "n_storages": len(keys),
        }
    )
    sources = [] if isinstance(main, StateDictReading) else _legacy_module_sources(main)
    if sources:
        details["module_sources"] = sources
    return ModelInfo(
        path=path,
        format=FORMAT,
        variant="legacy",
        format_version=str(LEGACY_PROTOCOL_VERSION),
        tensors=parsed.tensors,
        details={FORMAT: details},
        warnings=_warnings(details),
        tensor_loader=loader_for(src.path, parsed.refs, details["byteorder"]),
    )


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
            out.append(
                {
                    "class": getattr(tup[1], "qualname", str(tup[1])),
                    "source_file": str(tup[2]),
                    "source_lines": str(tup[3]).count("\n"),
                }
            )
    return out


def _legacy_pickles(data: bytes, path: str) -> list[Any]:
    view = memoryview(data)
    recs: list[Any] = []
    pos = 0
    for what in ("magic number", "protocol version", "sys_info", "object", "storage keys"):
        try:  # torch's names from the second pickle on, as the scan reads them
            rec = read_torch_object(
                view,
                pos,
                path=path,
                max_ops=MAX_OPS,
                torch_names=bool(recs),
                state_dicts=what == "object",
            )
        except CorruptFile as exc:
            raise CorruptFile(path, f"legacy {what} pickle: {exc.reason}", exc.offset) from None
        recs.append(rec)
        pos = rec.end
    if recs[0].value != TORCH_MAGIC:
        raise CorruptFile(path, "legacy file does not start with torch's magic number", 0)
    return recs


def _legacy_storage_offsets(
    src: Source,
    keys: list[str],
    dtype_of: dict[str, str],
    pos: int,
    little: bool,
    head: bytes = b"",
) -> dict[str, int]:
    """Byte offset of each storage's data: per key, an int64 element count then the bytes.

    ``head`` is the start of the file, already read: counts inside it are taken from it
    (a checkpoint of small tensors has thousands of them), the rest from the file."""
    starts: dict[str, int] = {}
    unpack = struct.Struct("<q" if little else ">q").unpack_from
    with open(src.path, "rb") as fh:  # one handle for thousands of 8-byte reads
        for key in keys:
            if key not in dtype_of:
                raise CorruptFile(
                    src.path,
                    f"storage {key!r} is listed but no tensor uses it "
                    f"(its element size is unknown)",
                    offset=pos,
                )
            if pos + 8 <= len(head):
                (numel,) = unpack(head, pos)
            else:
                fh.seek(pos)
                raw = fh.read(8)
                if len(raw) != 8:
                    raise CorruptFile(
                        src.path, f"storage {key!r}: file ends in its header", offset=pos
                    )
                (numel,) = unpack(raw)
            nbytes = numel * (dtypes.itemsize(dtype_of[key]) or 1)
            if numel < 0 or pos + 8 + nbytes > src.size:
                raise CorruptFile(
                    src.path,
                    f"storage {key!r} of {numel} elements runs past the end of the file",
                    offset=pos,
                )
            starts[key] = pos + 8
            pos += 8 + nbytes
    return starts


def read(src: Source, match) -> ModelInfo:
    """The tensors, names and pickle facts of a torch.save file (zip or legacy)."""
    if match.variant == "legacy":
        return read_legacy(src, match)
    return read_zip(src, match)


def _has_member(src: Source, name: str) -> bool:
    """Whether the archive has ``name`` (a dict lookup, not a set of every member name)."""
    try:
        src.zip().getinfo(name)
    except (KeyError, CorruptFile):  # CorruptFile: not a readable zip, like zip_names == []
        return False
    return True
