"""Generic weight edges: any readable format → safetensors, and → a PyTorch state_dict.

Tensors come from the source format's reader (``ModelInfo.tensor_loader``: reads one tensor's
bytes, never unpickles) and are written one at a time, so memory holds one tensor plus
buffers.  Shared storages (tied weights) are written once: safetensors cannot alias, so the
aliases go into ``__metadata__["keishiki.aliases"]`` (``{"lm_head.weight":
"model.embed_tokens.weight"}``) and are tied again on the way back to PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..core import dtypes
from ..core.atomic import WRITEBACK_CHUNK, start_writeback
from ..core.model import ModelInfo
from ..core.progress import progress
from ..core.tensor import LazyTensor, TensorInfo
from ..errors import InvalidRequest
from .base import ConvertOptions, StepReport, Timer
from .verify import (
    ReadBack,
    load_torch,
    open_safetensors_rows,
    prefetched,
    safetensors_names,
    torch_to_numpy,
)

ALIASES_KEY = "keishiki.aliases"
FLOATING = {"float64", "float32", "float16", "bfloat16"}


@dataclass
class SourceTensors:
    """The tensors a conversion writes: unique ones (in order), aliases, metadata, warnings."""

    tensors: list[LazyTensor]
    aliases: dict[str, str] = field(default_factory=dict)  # alias name -> written name
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    format: str = ""
    # name -> the safetensors file holding it (those tensors can be memory-mapped for torch.save)
    mapped_files: dict[str, Path] = field(default_factory=dict)
    # name -> (file, offset) where the tensor's exact output bytes already lie (contiguous,
    # little-endian, uncompressed): copied kernel-side with copy_file_range when not cast
    raw_spans: dict[str, tuple[Path, int]] = field(default_factory=dict)
    # tensors of the source left out: a Lua nn module's gradients, activations, workspaces
    dropped: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.info.nbytes for t in self.tensors)


# ---- reading the source -------------------------------------------------------------------


def read_model(src: Path) -> ModelInfo:
    """The source's ModelInfo from keishiki's reader (identify + read; no scan)."""
    from ..core.source import Source
    from ..formats import identify, read

    with Source(src) as source:
        return read(source, identify(source))


def source_tensors(src: Path, opts: ConvertOptions, info: ModelInfo | None = None) -> SourceTensors:
    """Everything to write from ``src``: its tensors (``opts.key`` selected), ties found.

    Raises:
        InvalidRequest: a training checkpoint without ``key``, an unknown ``key``, a whole
            pickled module without ``trust``, or a format whose tensor data keishiki cannot read.
    """
    info = info or read_model(src)
    kind = str(info.details.get(info.format, {}).get("kind", "")) if info.details else ""
    if info.format == "pytorch" and "module" in kind and info.tensor_loader is None:
        return _trusted_module(src, info, opts)
    # a whole pickled nn.Module with a reader that loads data: keishiki's pickle reader names
    # its parameters by the module tree without running any of its code, so no --trust needed
    if info.format == "pytorch" and info.tensor_loader is None:
        return _torch_fallback(src, opts)
    tensors = list(info.lazy_tensors())
    # what the PyTorch module would hold: strict load_state_dict fails on gradWeight & co.
    dropped = [t.name for t in tensors if (t.info.extra or {}).get("transient")]
    tensors = [t for t in tensors if not (t.info.extra or {}).get("transient")]
    if info.format == "pytorch":
        byteorder = str(info.details.get("pytorch", {}).get("byteorder", "little"))
        tensors = [_direct(src, t, byteorder) for t in tensors]
    if not tensors:
        what = (
            f"only the transient state of Lua nn modules ({', '.join(dropped[:3])}), which "
            f"a PyTorch module does not hold"
            if dropped
            else f"no tensors to convert ({info.format}{', ' + kind if kind else ''})"
        )
        raise InvalidRequest(f"{src}: holds {what}; keishiki info shows what it holds")
    tensors = _select_key(tensors, opts.key, src, checkpoint="checkpoint" in kind)
    unique, aliases = _dedupe(tensors)
    metadata = dict(info.metadata) if info.format == "safetensors" else {}
    aliases.update(_recorded_aliases(metadata))
    mapped = {t.name: Path(src) for t in unique} if info.format == "safetensors" else {}
    spans = {
        t.name: (Path(src), t.info.data_offset)
        for t in unique
        if info.format == "safetensors" and t.info.data_offset is not None and not t.info.file
    }
    spans.update(
        {
            t.name: (Path(src), t.info.data_offset)
            for t in unique
            if getattr(t.load, "direct", False)
        }
    )
    warnings = list(info.warnings)
    if dropped:
        warnings.append(
            f"left out {len(dropped)} tensors the PyTorch module does not hold "
            f"(gradients, activations, workspaces of Lua nn): "
            f"{', '.join(dropped[:4])}{' ...' if len(dropped) > 4 else ''}"
        )
    return SourceTensors(unique, aliases, metadata, warnings, info.format, mapped, spans, dropped)


def _contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for dim in reversed(shape):
        strides.append(acc)
        acc *= dim
    return strides[::-1]


def _direct(src: Path, lazy: LazyTensor, byteorder: str) -> LazyTensor:
    """A contiguous, little-endian tensor stored uncompressed is read straight into its final
    array (one copy, no temporary buffer); anything else goes through the reader's loader."""
    info = lazy.info
    stride = (info.extra or {}).get("stride")
    if (
        info.data_offset is None
        or (info.extra or {}).get("torch_flags")  # stored negated/conjugated
        or byteorder != "little"
        or stride is None
        or info.nbytes == 0
        or list(stride) != _contiguous_strides(tuple(info.shape))
    ):
        return lazy
    try:
        dtype = dtypes.to_numpy(info.dtype)
    except (KeyError, TypeError):
        return lazy
    if dtype.itemsize * info.numel != info.nbytes:
        return lazy

    def load() -> np.ndarray:
        arr = np.empty(info.shape, dtype=dtype)
        with open(src, "rb") as fh:
            fh.seek(info.data_offset)
            if fh.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != info.nbytes:
                return lazy.load()  # let the reader raise its CorruptFile
        return arr

    load.direct = True  # its bytes lie verbatim at info.data_offset
    return LazyTensor(info, load)


def _select_key(
    tensors: list[LazyTensor], key: str | None, src: Path, checkpoint: bool
) -> list[LazyTensor]:
    if key is None:
        if checkpoint:
            tops = sorted({t.name.split(".", 1)[0] for t in tensors})
            raise InvalidRequest(
                f"{src}: a training checkpoint, not a state_dict: pass `key` "
                f"with the entry holding the weights (one of: {', '.join(tops)})"
            )
        return tensors
    prefix = key.rstrip(".") + "."
    picked = [
        LazyTensor(replace(t.info, name=t.name[len(prefix) :]), t.load)
        for t in tensors
        if t.name.startswith(prefix)
    ]
    if not picked:
        tops = sorted({t.name.split(".", 1)[0] for t in tensors})
        raise InvalidRequest(
            f"{src}: key={key!r} holds no tensors (entries with tensors: "
            f"{', '.join(tops) or 'none'})"
        )
    return picked


def _tie_key(info: TensorInfo) -> tuple | None:
    """What makes two tensors the same values: storage, offset, shape, stride, dtype, and
    torch's neg/conj bits (``z.imag`` and ``z.conj().imag`` share all the rest)."""
    extra = info.extra or {}
    storage = next((extra[k] for k in ("storage_key", "storage", "key") if k in extra), None)
    if storage is None:
        return None
    offset = next((extra[k] for k in ("storage_offset", "offset") if k in extra), 0)
    stride = extra.get("stride")
    return (
        info.file,
        str(storage),
        offset,
        tuple(info.shape),
        tuple(stride) if stride is not None else None,
        info.dtype,
        tuple(extra.get("torch_flags") or ()),
    )


def _dedupe(tensors: list[LazyTensor]) -> tuple[list[LazyTensor], dict[str, str]]:
    unique: list[LazyTensor] = []
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for t in tensors:
        key = _tie_key(t.info)
        if key is not None and key in first:
            aliases[t.name] = first[key]
            continue
        if key is not None:
            first[key] = t.name
        unique.append(t)
    return unique, aliases


def _recorded_aliases(metadata: dict[str, str]) -> dict[str, str]:
    raw = metadata.pop(ALIASES_KEY, None)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # a file's metadata: anything
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _torch_fallback(src: Path, opts: ConvertOptions) -> SourceTensors:
    """torch.load(weights_only=True, mmap=True) when keishiki's pickle reader cannot load data
    (after the load gate: torch's unpickler is handed only what scans safe, or is trusted)."""
    from ..core.gate import admit

    admit(src, trust=opts.trust, purpose="read it with torch.load(weights_only=True)")
    torch = _torch()
    try:
        obj = torch.load(str(src), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        obj = torch.load(str(src), map_location="cpu", weights_only=True)
    return _from_torch_object(obj, src, opts)


def _trusted_module(src: Path, info: ModelInfo, opts: ConvertOptions) -> SourceTensors:
    if not opts.trust:
        raise InvalidRequest(
            f"{src}: a whole pickled nn.Module: naming its weights needs its "
            f"class code; pass trust_remote_code=True to load it with weights_only=False "
            f"(this RUNS code from the file), or save model.state_dict() instead"
        )
    torch = _torch()
    obj = torch.load(str(src), map_location="cpu", weights_only=False)
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    return _from_torch_object(obj, src, opts)


def _from_torch_object(obj, src: Path, opts: ConvertOptions) -> SourceTensors:
    torch = _torch()
    flat: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    walk("", obj)
    nested = isinstance(obj, dict) and any(not isinstance(v, torch.Tensor) for v in obj.values())
    tensors = [torch_lazy(name, t) for name, t in flat.items()]
    tensors = _select_key(tensors, opts.key, src, checkpoint=nested and opts.key is None)
    unique, aliases = _dedupe(tensors)
    return SourceTensors(unique, aliases, {}, [], "pytorch")


def torch_lazy(name: str, tensor) -> LazyTensor:
    """A LazyTensor over an in-memory (or mmap'd) torch tensor, tie key in ``extra``."""
    dtype = dtypes.from_torch_dtype(str(tensor.dtype).removeprefix("torch.")) or str(tensor.dtype)
    storage = tensor.untyped_storage()
    info = TensorInfo(
        name,
        dtype,
        tuple(tensor.shape),
        tensor.numel() * tensor.element_size(),
        extra={
            "storage_key": storage.data_ptr(),
            "storage_offset": tensor.storage_offset(),
            "stride": list(tensor.stride()),
        },
    )
    return LazyTensor(info, lambda t=tensor: torch_to_numpy(t.contiguous()))


def _torch():
    from .._optional import require

    return require("torch", extra="torch", purpose="read PyTorch tensors")


# ---- casting ------------------------------------------------------------------------------


def cast_info(info: TensorInfo, dtype: str | None) -> TensorInfo:
    """The TensorInfo after ``--dtype`` (only floating tensors change)."""
    if dtype is None or info.dtype not in FLOATING or info.dtype == dtype:
        return TensorInfo(info.name, info.dtype, tuple(info.shape), info.nbytes)
    return TensorInfo(info.name, dtype, tuple(info.shape), info.numel * dtypes.itemsize(dtype))


def cast_array(arr: np.ndarray, dtype: str | None) -> np.ndarray:
    """``arr`` cast to ``dtype`` (round to nearest even) when it is floating; else unchanged."""
    if dtype is None or dtypes.from_numpy(arr.dtype) not in FLOATING:
        return arr
    target = dtypes.to_numpy(dtype)
    if arr.dtype == target:
        return arr
    if arr.dtype == np.float64 and dtype == "bfloat16":
        arr = arr.astype(np.float32)  # torch rounds f64 -> bf16 through f32 as well
    return arr.astype(target)


def output_tensors(st: SourceTensors, dtype: str | None) -> list[LazyTensor]:
    """LazyTensors describing what is written: cast info, cast on load."""
    return [
        LazyTensor(cast_info(t.info, dtype), (lambda t=t: cast_array(t.load(), dtype)))
        for t in st.tensors
    ]


# ---- → safetensors ------------------------------------------------------------------------


def write_safetensors(
    path: Path, st: SourceTensors, opts: ConvertOptions, advance: Callable | None = None
) -> int:
    """Stream ``st`` into one safetensors file at ``path``; returns bytes written."""
    from ..formats import safetensors as st_format

    metadata = {"format": "pt", **st.metadata}
    if st.aliases:
        metadata[ALIASES_KEY] = json.dumps(st.aliases, sort_keys=True)
    tensors = output_tensors(st, opts.dtype)
    sources: dict[Path, object] = {}
    with open(path, "wb", buffering=0) as fh:
        fh.write(st_format.build_header([t.info for t in tensors], metadata))
        for lazy, src_lazy in zip(tensors, st.tensors):
            span = st.raw_spans.get(src_lazy.name)
            if span is not None and lazy.info.dtype == src_lazy.info.dtype and lazy.info.nbytes:
                if _copy_span(fh, sources, span, lazy.info.nbytes):
                    if advance:
                        advance(lazy.info.nbytes)
                    continue
            arr = np.asarray(lazy.load())
            # (np.ascontiguousarray would turn a 0-d scalar into shape [1])
            arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            if arr.nbytes != lazy.info.nbytes or tuple(arr.shape) != tuple(lazy.info.shape):
                raise ValueError(
                    f"{lazy.name}: loaded {arr.dtype}{list(arr.shape)} but the "
                    f"header says {lazy.info.dtype}{list(lazy.info.shape)}"
                )
            # write the array's own buffer: no bytes copy of a possibly huge tensor
            _write_all(fh, memoryview(arr.reshape(-1).view(np.uint8)))
            del arr
            if advance:
                advance(lazy.info.nbytes)
    for handle in sources.values():
        handle.close()
    return path.stat().st_size


def _write_all(fh, view: memoryview) -> None:
    """Write all of ``view`` (an unbuffered FileIO may write less than asked), starting the
    disk write of each chunk as it goes."""
    while view.nbytes:
        at = fh.tell()
        n = fh.write(view[:WRITEBACK_CHUNK])
        start_writeback(fh.fileno(), at, n)
        view = view[n:]


def _copy_span(fh, sources: dict, span: tuple[Path, int], nbytes: int) -> bool:
    """Copy ``nbytes`` at ``span`` into ``fh`` in the kernel (os.copy_file_range, like cp),
    starting the disk write of each chunk as it lands (see ``start_writeback``); False when
    the platform or file system cannot, before anything was written."""
    import os

    path, offset = span
    if not hasattr(os, "copy_file_range"):
        return False
    if path not in sources:
        sources[path] = open(path, "rb", buffering=0)
    src_fd, dst_fd, done = sources[path].fileno(), fh.fileno(), 0
    try:
        while done < nbytes:
            at = fh.tell()
            n = os.copy_file_range(
                src_fd, dst_fd, min(WRITEBACK_CHUNK, nbytes - done), offset + done
            )
            if n == 0:
                raise OSError("copy_file_range copied nothing (short source)")
            start_writeback(dst_fd, at, n)
            done += n
    except OSError:
        if done:  # part of the tensor is written: finish it with ordinary reads
            with open(path, "rb") as src:
                src.seek(offset + done)
                while done < nbytes:
                    chunk = src.read(min(64 << 20, nbytes - done))
                    if not chunk:
                        raise
                    _write_all(fh, memoryview(chunk))
                    done += len(chunk)
            return True
        return False
    return True


def verify_safetensors(
    path: Path,
    st: SourceTensors,
    dtype: str | None,
    rename: Callable[[str], str] = str,
    advance: Callable | None = None,
) -> dict:
    """Read ``path`` back with safetensors.safe_open and compare every tensor with the source
    (``advance(nbytes)`` after each: a progress bar)."""
    rb = ReadBack(library="safetensors.safe_open")
    names, metadata = safetensors_names(path)
    present = set(names)
    expected_names = set()
    todo = []
    for t in st.tensors:
        name = rename(t.name)
        expected_names.add(name)
        if name in present:
            todo.append((t, name))
        else:
            rb.missing.append(name)
    with open_safetensors_rows(path) as get_rows:
        for (t, name), original in zip(todo, prefetched(t.load for t, _ in todo)):
            if advance:
                advance(t.info.nbytes)
            expected = cast_array(original, dtype)
            rb.compare_rows(
                name, expected, get_rows(name), original=None if expected is original else original
            )
            del original, expected
    rb.unexpected.extend(sorted(present - expected_names))
    recorded = json.loads(metadata.get(ALIASES_KEY, "{}"))
    for alias, target in st.aliases.items():
        if recorded.get(alias) == target and target in present:
            rb.count_ok()
        else:
            rb.missing.append(alias)
    return rb.result()


def to_safetensors(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``X -> safetensors`` for any format whose reader loads tensor data."""
    st = source_tensors(src, opts)
    report = StepReport(
        edge=f"{st.format} -> safetensors", src=str(src), out=str(out), warnings=list(st.warnings)
    )
    with (
        Timer() as timer,
        progress(st.nbytes, "-> safetensors", opts.quiet, unit_bytes=True) as adv,
    ):
        report.bytes_written = write_safetensors(out, st, opts, adv)
    report.n_tensors = len(st.tensors)
    if st.aliases:
        report.details["aliases"] = st.aliases
    if st.dropped:
        report.details["dropped"] = st.dropped
    if opts.verify:
        with progress(st.nbytes, "verifying", opts.quiet, unit_bytes=True) as adv:
            report.verify = verify_safetensors(out, st, opts.dtype, advance=adv)
    report.seconds = timer.seconds
    return report


# ---- → pytorch ----------------------------------------------------------------------------


def torch_tensors(st: SourceTensors, dtype: str | None) -> dict[str, object]:
    """{name: torch tensor} for torch.save, ties restored.

    Memory bound: safetensors sources become tensors over one copy-on-write memory map of the
    file, so torch.save streams them from the page cache (file-backed, reclaimable pages)
    rather than from private memory; other sources are loaded (small legacy formats).  With
    ``--dtype`` the cast copies are held in memory, because torch.save needs every storage at
    once.
    """
    torch = _torch()
    maps: dict[Path, np.memmap] = {}
    out: dict[str, object] = {}
    for t in st.tensors:
        path = st.mapped_files.get(t.name)
        if path is not None and t.info.data_offset is not None and t.info.nbytes:
            if path not in maps:
                maps[path] = np.memmap(path, dtype=np.uint8, mode="c")
            raw = maps[path][t.info.data_offset : t.info.data_offset + t.info.nbytes]
            tensor = _bytes_to_torch(torch, raw, t.info)
            if dtype is not None and t.info.dtype in FLOATING:
                tensor = tensor.to(getattr(torch, dtype))
        else:
            tensor = numpy_to_torch(cast_array(t.load(), dtype))
        out[t.name] = tensor
    for alias, target in st.aliases.items():
        if target in out:
            out[alias] = out[target]
    return out


def _bytes_to_torch(torch, raw: np.ndarray, info: TensorInfo):
    base = torch.from_numpy(raw)
    torch_dtype = getattr(torch, info.dtype)
    if not info.shape:
        return base.view(torch_dtype).reshape(())
    return base.view(torch_dtype).reshape(info.shape)


def numpy_to_torch(arr: np.ndarray):
    """A torch tensor sharing ``arr``'s memory (bfloat16/float8 via their bits)."""
    torch = _torch()
    arr = np.ascontiguousarray(arr)
    name = dtypes.from_numpy(arr.dtype)
    if name == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    if name in ("float8_e4m3fn", "float8_e5m2"):
        return torch.from_numpy(arr.view(np.uint8)).view(getattr(torch, name))
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def verify_pytorch(
    path: Path,
    st: SourceTensors,
    dtype: str | None,
    rename: Callable[[str], str] = str,
    loaded: dict | None = None,
) -> dict:
    """Read ``path`` back with torch.load(weights_only=True, mmap=True) and compare."""
    rb = ReadBack(library="torch.load(weights_only=True, mmap=True)")
    state = loaded if loaded is not None else load_torch(path)
    expected_names = set()
    for t in st.tensors:
        name = rename(t.name)
        expected_names.add(name)
        if name not in state:
            rb.missing.append(name)
            continue
        original = t.load()
        rb.compare(
            name, cast_array(original, dtype), torch_to_numpy(state[name]), original=original
        )
    for alias, target in st.aliases.items():
        a, b = state.get(rename(alias)), state.get(rename(target))
        expected_names.add(rename(alias))
        if a is not None and b is not None and _same_memory(a, b):
            rb.count_ok()
        else:
            rb.missing.append(f"{rename(alias)} (tied to {rename(target)})")
    rb.unexpected.extend(sorted(set(state) - expected_names))
    return rb.result()


def _same_memory(a, b) -> bool:
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
    )


def to_pytorch(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``X -> pytorch``: a torch.save zip state_dict (ties restored from the aliases)."""
    torch = _torch()
    st = source_tensors(src, opts)
    report = StepReport(
        edge=f"{st.format} -> pytorch", src=str(src), out=str(out), warnings=list(st.warnings)
    )
    with Timer() as timer, progress(None, "-> pytorch", opts.quiet):
        state = torch_tensors(st, opts.dtype)
        torch.save(state, str(out))
        del state
    report.n_tensors = len(st.tensors)
    report.bytes_written = out.stat().st_size
    if st.aliases:
        report.details["aliases"] = st.aliases
    if st.dropped:
        report.details["dropped"] = st.dropped
    if opts.verify:
        with progress(None, "verifying", opts.quiet):
            report.verify = verify_pytorch(out, st, opts.dtype)
    report.seconds = timer.seconds
    return report
