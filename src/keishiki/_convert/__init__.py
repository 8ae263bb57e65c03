"""``keishiki.convert(src, out, to=...)``: find a path through the conversion graph, run each
edge into a temporary name, verify it, and rename the result into place.

>>> report = keishiki.convert("pytorch_model.bin", "model.safetensors", to="safetensors")
>>> report.path, report.passed
(['pytorch -> safetensors'], True)

A path of several edges (``torch7 -> safetensors -> gguf``) runs through a hidden temporary
folder beside the output, removed at the end.  A SIGKILL at any moment leaves nothing under
the output's name (only hidden ``.OUT.keishiki-*`` leftovers).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.atomic import (
    atomic_output,
    check_free_space,
    check_output,
    output_lock,
    replace_refusal,
    steps_folder,
)
from ..core.gate import admit, check_tree, problem, verdict
from ..errors import InvalidRequest, Mismatch, MissingDependency, PathNotFound

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .base import ConvertKwargs

from .base import (
    DTYPES,
    GGUF_QUANTS,
    ONNX_QUANTS,
    OUTPUT_KINDS,
    STEP_SUFFIX,
    TARGETS,
    ConvertOptions,
    ConvertReport,
    Edge,
    StepReport,
    output_is_folder,
)

__all__ = ["convert", "ConvertOptions", "ConvertReport", "StepReport", "Edge", "parse_size"]

_OPTION_NAMES = ({f.name for f in fields(ConvertOptions)} - {"to"}) | {"trust_remote_code"}


def convert(
    src: str | os.PathLike, out: str | os.PathLike, to: str, **options: Unpack[ConvertKwargs]
) -> ConvertReport:
    """Convert the model at ``src`` into format ``to`` at ``out``, verified.

    Args:
        src: a model file or folder in any format keishiki reads.
        out: the output file or folder (must not exist unless ``force=True``).
        to: target format id: safetensors, pytorch, hf-model, gguf, torchscript, onnx.
        **options: the fields of :class:`ConvertOptions` (``dtype``, ``force``, ``verify``,
            ``strict``, ``key``, ``shard_size`` (int or ``"5GB"``), ``quant``,
            ``trust_remote_code``, ...).

    Returns:
        A :class:`ConvertReport` with the path taken and every step's verification.

    Raises:
        PathNotFound: ``src`` does not exist.
        InvalidRequest: bad options, an existing output without ``force``, output == input.
        UnsafeFile: a file of the source leads outside its folder; or the path hands the
            source to a loader that can run its code (transformers, a whole-module pickle)
            and it scans dangerous or unknown, without ``trust_remote_code``.
        NoConversionPath: no chain of edges from the source's format to ``to``.
        MissingDependency: an edge needs an extra that is not installed.
        Mismatch: the result differs from the source (kept as ``OUT.unverified`` unless
            ``strict``); ``Mismatch.report`` holds the full report.
    """
    from .paths import describe, find_path

    opts = make_options(to, options)
    src, out = Path(src), Path(out)
    if not src.exists():
        raise PathNotFound(src)
    check_output(
        out,
        [src],
        opts.force,
        folder=output_is_folder(opts.to, out, src.is_dir()),
        kinds=OUTPUT_KINDS[opts.to],
    )
    check_tree(src)
    src_format = source_format(src)
    path = _with_quant_edge(find_path(src_format, opts.to), opts)
    _check_extras(path)
    source_scan = _admit_source(src, src_format, path[0], opts)
    check_free_space(out.parent if str(out.parent) else Path("."), _space_needed(src, path, opts))

    report = ConvertReport(
        src=str(src),
        out=str(out),
        src_format=src_format,
        to=opts.to,
        path=describe(path),
        source_scan=source_scan,
    )
    start = time.perf_counter()
    try:
        with output_lock(out):
            _run_path(src, out, path, opts, report)
    finally:
        report.seconds = time.perf_counter() - start
    return report


def _with_quant_edge(path: list[Edge], opts: ConvertOptions) -> list[Edge]:
    """``--to onnx --quant int8|int4``: the path to ONNX, then onnxruntime's quantizer (an
    ``onnx -> onnx`` rewrite is dropped unless it has an opset to change)."""
    if opts.to != "onnx" or not opts.quant:
        return path
    from .edges import ONNX_QUANT_EDGE

    if path and path[-1].run.endswith(":onnx_to_onnx") and opts.opset is None:
        path = path[:-1]
    return [*path, ONNX_QUANT_EDGE]


def _admit_source(src: Path, src_format: str, first: Edge, opts: ConvertOptions) -> dict | None:
    """The load gate for a conversion's source: it scans safe, or ``opts.trust``.

    Untrusted, a source that scans dangerous or unknown is refused whatever the edge, so no
    output is ever derived from it silently (an escaping chat template would travel into a
    GGUF, say).  Trusted, an edge that hands the source to a third-party loader
    (:attr:`Edge.loads_source`) may run its code; every other edge reads it with keishiki's
    own readers, which run nothing, and the report says so (``source_scan``; the CLI prints
    it in one line): that is how the weights of a hostile pickle are taken out safely.
    """
    from .._scan import CODE_BEARING

    if first.loads_source or src_format in CODE_BEARING:
        admit(src, trust=opts.trust, purpose=_purpose(first), unread_blocks=first.loads_source)
    if not opts.trust or first.loads_source or src_format not in CODE_BEARING:
        return None
    report = verdict(src)
    reason = problem(report, unread_blocks=False)
    if reason is None:
        return None
    return {
        "verdict": report.verdict,
        "reason": reason,
        "read_by": "keishiki's own reader, which runs nothing from the file",
    }


def _purpose(first: Edge) -> str:
    if first.loads_source:
        return f"convert ({first.name} loads it with its library)"
    return (
        f"convert ({first.name} reads it with keishiki's own reader, which runs nothing: "
        f"trust_remote_code=True takes the weights out anyway)"
    )


def source_format(src: Path) -> str:
    """The format id of ``src``, by content (:func:`keishiki.formats.identify`)."""
    from ..formats import identify

    return identify(src).format


def make_options(to: str, options: Mapping[str, Any]) -> ConvertOptions:
    """Validate keyword options into a :class:`ConvertOptions` (InvalidRequest on bad ones)."""
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise InvalidRequest(
            f"unknown convert option(s): {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_OPTION_NAMES))})"
        )
    if to not in TARGETS:
        raise InvalidRequest(f"cannot write {to!r}: `to` must be one of {', '.join(TARGETS)}")
    if "trust_remote_code" in options:  # the Python API's name for --trust
        options = dict(options)
        options["trust"] = bool(options.pop("trust_remote_code")) or options.get("trust", False)
    opts = ConvertOptions(to=to, **options)
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise InvalidRequest(f"dtype={opts.dtype!r}: use one of {', '.join(DTYPES)}")
    if isinstance(opts.shard_size, str):
        opts.shard_size = parse_size(opts.shard_size)
    if opts.shard_size is not None and opts.shard_size <= 0:
        raise InvalidRequest("`shard_size` must be positive (e.g. 5GB)")
    if isinstance(opts.split_max_size, str):  # gguf-split's units: 2G, 500M
        from .gguf_split import parse_split_size

        opts.split_max_size = parse_split_size(opts.split_max_size)
    for name in ("split_max_size", "split_max_tensors"):
        if getattr(opts, name) is not None and getattr(opts, name) <= 0:
            raise InvalidRequest(f"`{name}` must be positive")
    from .._compare.weights import check_tolerances

    check_tolerances(atol=opts.atol, rtol=opts.rtol)
    for name, targets in _TARGET_ONLY.items():
        if getattr(opts, name) is not None and to not in targets:
            raise InvalidRequest(f"`{name}` applies to to={' / '.join(targets)} only, not to={to}")
    if opts.quant is not None:
        opts.quant = _quant_name(opts.quant, to)
    # onnxruntime's MatMulNBits quantizer (MLAS MlasQuantizeBlockwise) takes 16..256 only;
    # a larger power of 2 was an internal RuntimeError from deep inside it
    if opts.block_size is not None and (
        opts.quant != "int4"
        or opts.block_size < 16
        or opts.block_size > 256
        or opts.block_size & (opts.block_size - 1)
    ):
        raise InvalidRequest(
            f"block_size={opts.block_size}: applies to quant=int4, a "
            f"power of 2 from 16 to 256 (e.g. 32, 128)"
        )
    return opts


def _quant_name(quant: str, to: str) -> str:
    """``--quant`` as spelled in :data:`GGUF_QUANTS` / :data:`ONNX_QUANTS` (any case) for
    target ``to``; InvalidRequest naming every choice otherwise."""
    choices = ONNX_QUANTS if to == "onnx" else GGUF_QUANTS
    found = {q.lower(): q for q in choices}.get(str(quant).lower())
    if found is None:
        raise InvalidRequest(f"quant={quant!r} for to={to}: use one of {', '.join(choices)}")
    return found


# options that mean something for one kind of output only: silently ignoring them would
# let a user believe, say, --quant q8_0 shrank a safetensors file
_TARGET_ONLY = {
    "quant": ("gguf", "onnx"),
    "block_size": ("onnx",),
    "opset": ("onnx",),
    "exporter": ("onnx",),
    "external_data": ("onnx",),
    "method": ("torchscript",),
    "example_input": ("torchscript",),
    "split_max_size": ("gguf",),
    "split_max_tensors": ("gguf",),
}


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """``"5GB"`` → 5_000_000_000, ``"500MiB"`` → 524_288_000, ``1024`` → 1024 (as transformers)."""
    if isinstance(text, int):
        return text
    raw = str(text).strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0:
        raise InvalidRequest(f"size {text!r}: write it like 5GB, 500MB or 2GiB")
    return int(value * _UNITS[unit])


def _check_extras(path: list[Edge]) -> None:
    from .._optional import available
    from .edges import EXTRA_MODULES

    for edge in path:
        for extra in edge.extras:
            for module in EXTRA_MODULES.get(extra, ()):
                if not available(module):
                    raise MissingDependency(module, extra, purpose=f"convert {edge.name}")


def _space_needed(src: Path, path: list[Edge], opts: ConvertOptions) -> int:
    """A generous estimate of the bytes the conversion writes (every step's output)."""
    from ..core.source import Source

    size = Source(src).size
    growth = 1.0
    if path[0].src == "gguf" or opts.dtype == "float32":
        growth = 4.0  # dequantizing (q4 -> f32 is ~8x, but 4x of a mostly-q8/f16 file is typical)
    return int(size * growth * len(path))


def _quant_edge() -> Edge:
    from .edges import ONNX_QUANT_EDGE

    return ONNX_QUANT_EDGE


def _step_out(steps_dir: Path, i: int, edge: Edge) -> Path:
    suffix = "" if edge.dst == "hf-model" else STEP_SUFFIX.get(edge.dst, "")
    return steps_dir / f"step{i}-{edge.dst}{suffix}"


def _run_path(
    src: Path, out: Path, path: list[Edge], opts: ConvertOptions, report: ConvertReport
) -> None:
    steps_dir = steps_folder(out)
    current = src
    try:
        for i, edge in enumerate(path):
            last = i == len(path) - 1
            if not last:
                steps_dir.mkdir(parents=True, exist_ok=True)
                step_out = _step_out(steps_dir, i, edge)
                # an ONNX export quantized next is a folder: its tokenizer and config, and
                # the external data of a model over 2 GB, travel to the quantized one
                folder = edge.dst == "hf-model" or (
                    edge.dst == "onnx" and path[i + 1] is _quant_edge()
                )
                if folder:
                    step_out = step_out.with_suffix("")
                    step_out.mkdir()
                # --quant/--block-size are the last edge's: an intermediate step (the GGUF
                # on the way safetensors -> gguf -> ... -> onnx --quant int8) stays lossless
                # (it was handed "int8" as a GGUF type: a KeyError)
                step_opts = replace(opts, to=edge.dst, force=True, quant=None, block_size=None)
                step = _run_edge(edge, current, step_out, step_opts)
                report.steps.append(step)
                if step.passed is False:
                    raise Mismatch(
                        f"{edge.name} (intermediate step) failed verification: "
                        f"{_why(step)}; nothing written to {out}",
                        report.to_dict(),
                    )
                current = step_out
            else:
                _run_last(edge, current, src, out, opts, report)
    finally:
        if steps_dir.exists():
            shutil.rmtree(steps_dir, ignore_errors=True)


def _run_last(
    edge: Edge, current: Path, src: Path, out: Path, opts: ConvertOptions, report: ConvertReport
) -> None:
    folder = output_is_folder(opts.to, out, src.is_dir())
    from .gguf_split import atomic_splits, wants_split

    # a split GGUF is several files beside OUT: written and verified in a temporary folder
    target = (
        atomic_splits(out, src, force=opts.force)
        if wants_split(opts) and not folder
        else atomic_output(out, force=opts.force, folder=folder)
    )
    with target as tmp:
        step = _run_edge(edge, current, tmp, opts)
        step.out = str(out)  # the edge saw the temporary name
        report.steps.append(step)
        if step.passed is False:
            kept = _keep_unverified(tmp, out, opts, (src, current))
            report.kept_as = kept
            where = f"kept as {kept} for inspection" if kept else "removed (strict=True)"
            raise Mismatch(
                f"{out}: verification failed ({_why(step)}); output {where}", report.to_dict()
            )


def _run_edge(edge: Edge, src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    fn = edge.function()
    start = time.perf_counter()
    step = fn(src, out, opts)
    if not step.seconds:
        step.seconds = time.perf_counter() - start
    step.edge = step.edge or edge.name
    return step


def _keep_unverified(
    tmp: Path, out: Path, opts: ConvertOptions, inputs: tuple[Path, ...]
) -> str | None:
    """Move an output that failed verification to ``OUT.unverified`` (None with strict).
    What already holds that name is replaced only as OUT would be: with force, when it is
    keishiki's kind of output, and never when it is (or holds) an input; otherwise the
    output goes to a free ``OUT.unverified-PID[-N]`` name."""
    if opts.strict:
        return None
    kept = out.with_name(out.name + ".unverified")
    if (kept.exists() or kept.is_symlink()) and not _may_replace(kept, tmp.is_dir(), opts, inputs):
        base, n = f"{out.name}.unverified-{os.getpid()}", 0
        kept = out.with_name(base)
        while kept.exists() or kept.is_symlink():
            n += 1
            kept = out.with_name(f"{base}-{n}")
    if kept.is_dir() and not kept.is_symlink():
        shutil.rmtree(kept)
    elif kept.exists() or kept.is_symlink():
        kept.unlink()
    os.replace(tmp, kept)
    return str(kept)


def _may_replace(path: Path, folder: bool, opts: ConvertOptions, inputs: tuple[Path, ...]) -> bool:
    if not opts.force or replace_refusal(path, folder):
        return False
    target = path.resolve()
    return not any(
        target == i.resolve() or i.resolve().is_relative_to(target) for i in map(Path, inputs)
    )


def _why(step: StepReport) -> str:
    v = step.verify
    for key in ("reason", "message"):
        if v.get(key):
            return str(v[key])
    bits = [f"{k}={v[k]}" for k in ("max_abs_diff", "n_mismatched", "tokens_match") if k in v]
    return ", ".join(bits) or "outputs differ"
