"""Hugging Face folders: ``pytorch_model.bin`` (single or sharded) ↔ ``model.safetensors``
(single or sharded with a correct ``*.index.json``), config and tokenizer carried over.

transformers 5.x no longer writes ``.bin`` files (``safe_serialization=False`` is ignored), so
the PyTorch side is written with ``torch.save`` directly, one shard at a time.  Shards are
planned greedily in the source's tensor order, as ``save_pretrained`` does: a shard closes
when the next tensor would push it past ``--shard-size``; a tensor larger than the limit gets
a shard of its own.  The index's ``total_size`` is the sum of the tensors' bytes (what
transformers writes), not the file sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..core.atomic import is_sidecar
from ..core.progress import progress
from ..errors import InvalidRequest
from .base import ConvertOptions, StepReport, Timer
from .weights import (
    SourceTensors,
    _torch,
    source_tensors,
    torch_tensors,
    verify_pytorch,
    verify_safetensors,
    write_safetensors,
)

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def weight_files(folder: Path) -> tuple[str, list[Path]]:
    """(``"safetensors"`` or ``"pytorch"``, the weight files in order) of an HF folder.

    Safetensors weights win when a folder has both.

    Raises:
        InvalidRequest: the folder has no safetensors or pytorch_model.bin weights.
    """
    for kind, single, index in (
        ("safetensors", SAFE_SINGLE, SAFE_INDEX),
        ("pytorch", BIN_SINGLE, BIN_INDEX),
    ):
        if (folder / index).is_file():
            weight_map = _read_index(folder / index)
            names = list(dict.fromkeys(weight_map.values()))
            return kind, [_inside(folder, n) for n in names]
        if (folder / single).is_file():
            return kind, [folder / single]
    raise InvalidRequest(
        f"{folder}: no model.safetensors or pytorch_model.bin weights (with or "
        f"without an index) in this Hugging Face folder"
    )


def _read_index(path: Path) -> dict[str, str]:
    from ..core.source import Source

    data = Source(path).read_json()
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise InvalidRequest(f"{path}: no weight_map in this index file")
    return {str(k): str(v) for k, v in weight_map.items()}


def _inside(folder: Path, rel: str) -> Path:
    from ..core.source import Source

    return Source(folder).child(rel)


def folder_tensors(folder: Path, opts: ConvertOptions) -> tuple[str, SourceTensors]:
    """All tensors of an HF folder's weight files, merged in shard order."""
    kind, files = weight_files(folder)
    merged = SourceTensors([], format=kind)
    for path in files:
        part = source_tensors(path, opts)
        merged.tensors += part.tensors
        merged.aliases.update(part.aliases)
        merged.warnings += part.warnings
        merged.mapped_files.update(part.mapped_files)
        merged.raw_spans.update(part.raw_spans)
    return kind, merged


def plan_shards(
    st: SourceTensors, shard_size: int | None, dtype: str | None
) -> list[SourceTensors]:
    """Split ``st`` into shards of at most ``shard_size`` bytes (after ``dtype``); aliases go
    with the shard of the tensor they alias."""
    from .weights import cast_info

    shards: list[SourceTensors] = [SourceTensors([], format=st.format)]
    used = 0
    for t in st.tensors:
        size = cast_info(t.info, dtype).nbytes
        if shard_size and shards[-1].tensors and used + size > shard_size:
            shards.append(SourceTensors([], format=st.format))
            used = 0
        shards[-1].tensors.append(t)
        used += size
    owner = {t.name: shard for shard in shards for t in shard.tensors}
    for alias, target in st.aliases.items():
        if target in owner:
            owner[target].aliases[alias] = target
    for shard in shards:
        shard.mapped_files = {
            t.name: st.mapped_files[t.name] for t in shard.tensors if t.name in st.mapped_files
        }
        shard.raw_spans = {
            t.name: st.raw_spans[t.name] for t in shard.tensors if t.name in st.raw_spans
        }
    return shards


def shard_names(kind: str, n: int) -> list[str]:
    """transformers' names: ``model.safetensors`` or ``model-00001-of-00003.safetensors``."""
    if kind == "safetensors":
        return (
            [SAFE_SINGLE]
            if n == 1
            else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        )
    return (
        [BIN_SINGLE]
        if n == 1
        else [f"pytorch_model-{i:05d}-of-{n:05d}.bin" for i in range(1, n + 1)]
    )


def write_index(
    path: Path, shards: list[SourceTensors], names: list[str], dtype: str | None
) -> dict:
    """Write the ``*.index.json`` (metadata.total_size + weight_map) and return it."""
    from .weights import cast_info

    weight_map: dict[str, str] = {}
    total = 0
    for shard, name in zip(shards, names):
        for t in shard.tensors:
            weight_map[t.name] = name
            total += cast_info(t.info, dtype).nbytes
        for alias in shard.aliases:
            weight_map[alias] = name
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    path.write_text(json.dumps(index, indent=2) + "\n")
    return index


def copy_side_files(src: Path, out: Path, dtype: str | None = None) -> list[str]:
    """Copy what travels with the weights (:func:`keishiki.core.atomic.is_sidecar`: config,
    tokenizer, model card, licence, remote code; top level, regular files only), not other
    formats' weights (a model.onnx or *.gguf beside them would be stale copies, and a
    --force run could not replace a folder holding them); set the config's dtype when
    ``--dtype`` changed it.  Returns the copied names."""
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_symlink() or not path.is_file() or not is_sidecar(path.name):
            continue
        shutil.copy2(path, out / path.name)
        copied.append(path.name)
    config = out / "config.json"
    if dtype and config.is_file():
        data = json.loads(config.read_text())
        keys = [k for k in ("dtype", "torch_dtype") if k in data] or ["dtype"]
        for key in keys:
            data[key] = dtype
        config.write_text(json.dumps(data, indent=2) + "\n")
    return copied


def _merge_verify(results: list[dict]) -> dict:
    if not results:
        return {}
    merged = dict(results[0])
    for r in results[1:]:
        merged["passed"] = merged["passed"] and r["passed"]
        for k in ("n_compared", "n_bit_exact", "n_mismatched"):
            merged[k] += r[k]
        merged["max_abs_diff"] = max(merged["max_abs_diff"], r["max_abs_diff"])
        merged["missing"] = (merged["missing"] + r["missing"])[:10]
        merged["unexpected"] = (merged["unexpected"] + r["unexpected"])[:10]
        if r.get("reason"):
            merged["reason"] = "; ".join(filter(None, [merged.get("reason"), r["reason"]]))
    return merged


def _check_index(out: Path, index_name: str, names: list[str]) -> dict:
    """Every weight_map entry names a written shard, and every shard holds its entries."""
    index = json.loads((out / index_name).read_text())
    files = set(index["weight_map"].values())
    missing = sorted(files - set(names))
    return {"index": index_name, "index_ok": not missing, "n_shards": len(names)}


def _to_folder_kind(src: Path, out: Path, opts: ConvertOptions, target: str) -> StepReport:
    if not src.is_dir():
        raise InvalidRequest(f"{src}: not a Hugging Face folder")
    kind, st = folder_tensors(src, opts)
    report = StepReport(
        edge=f"hf-model -> {target}", src=str(src), out=str(out), warnings=list(st.warnings)
    )
    report.details["source_weights"] = kind
    with Timer() as timer:
        if out.is_dir():
            _write_folder(src, out, st, opts, target, report)
        else:
            if opts.shard_size:
                raise InvalidRequest(
                    "`shard_size` needs a folder output (a path without a .safetensors/.bin suffix)"
                )
            _write_single(out, st, opts, target, report)
    report.seconds = timer.seconds
    return report


def _write_single(
    out: Path, st: SourceTensors, opts: ConvertOptions, target: str, report: StepReport
) -> None:
    report.n_tensors = len(st.tensors)
    if target == "safetensors":
        with progress(st.nbytes, "-> safetensors", opts.quiet, unit_bytes=True) as adv:
            report.bytes_written = write_safetensors(out, st, opts, adv)
        if opts.verify:
            with progress(st.nbytes, "verifying", opts.quiet, unit_bytes=True) as adv:
                report.verify = verify_safetensors(out, st, opts.dtype, advance=adv)
    else:
        with progress(None, "-> pytorch", opts.quiet):
            _torch().save(torch_tensors(st, opts.dtype), str(out))
        report.bytes_written = out.stat().st_size
        if opts.verify:
            with progress(None, "verifying", opts.quiet):
                report.verify = verify_pytorch(out, st, opts.dtype)


def _write_folder(
    src: Path, out: Path, st: SourceTensors, opts: ConvertOptions, target: str, report: StepReport
) -> None:
    shards = plan_shards(st, opts.shard_size, opts.dtype)
    names = shard_names(target, len(shards))
    results = []
    with progress(st.nbytes, f"-> {target}", opts.quiet, unit_bytes=True) as adv:
        for shard, name in zip(shards, names):
            path = out / name
            if target == "safetensors":
                report.bytes_written += write_safetensors(path, shard, opts, adv)
            else:
                _torch().save(torch_tensors(shard, opts.dtype), str(path))
                report.bytes_written += path.stat().st_size
                adv(shard.nbytes)
    if len(shards) > 1:
        write_index(
            out / (SAFE_INDEX if target == "safetensors" else BIN_INDEX), shards, names, opts.dtype
        )
    report.details["shards"] = names
    report.details["copied"] = copy_side_files(src, out, opts.dtype)
    report.n_tensors = len(st.tensors)
    if opts.verify:
        with progress(st.nbytes, "verifying", opts.quiet, unit_bytes=True) as adv:
            for shard, name in zip(shards, names):
                if target == "safetensors":
                    results.append(verify_safetensors(out / name, shard, opts.dtype, advance=adv))
                else:
                    results.append(verify_pytorch(out / name, shard, opts.dtype))
                    adv(shard.nbytes)
        report.verify = _merge_verify(results)
        if len(shards) > 1:
            index_name = SAFE_INDEX if target == "safetensors" else BIN_INDEX
            report.verify.update(_check_index(out, index_name, names))
            report.verify["passed"] = report.verify["passed"] and report.verify["index_ok"]


def to_safetensors(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``hf-model -> safetensors`` (and ``-> hf-model``): an HF folder with safetensors
    weights (sharded by ``--shard-size``), or one merged file when OUT is a file."""
    return _to_folder_kind(src, out, opts, "safetensors")


def to_pytorch(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``hf-model -> pytorch``: an HF folder with ``pytorch_model.bin`` (sharded with an
    index by ``--shard-size``), or one merged state_dict file when OUT is a file."""
    return _to_folder_kind(src, out, opts, "pytorch")
