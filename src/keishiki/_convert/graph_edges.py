"""Graph edges: conversions that capture or rewrite a computation, verified by running both.

- ``hf-model -> onnx``: causal LM with KV cache (:mod:`.onnx_export`), greedy-checked in ORT.
- ``hf-model -> torchscript`` and ``pytorch -> torchscript`` (whole-module pickle, ``--trust``):
  :mod:`.torchscript_export`, checked against the eager model.
- ``onnx -> onnx``: opset change and embedded ↔ external data (:mod:`.onnx_ops`), both graphs
  run in ORT on the same inputs.
- ``onnx -> safetensors``: initializers and Constant tensors, read back and compared with
  ``onnx.numpy_helper``'s view of the source.

This module is imported by the edge registry: nothing heavy at import time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..core.atomic import TOKENIZER_FILES, final_name
from ..core.progress import progress
from ..errors import InvalidRequest, PathNotFound
from .base import ConvertOptions, Edge, StepReport, Timer

_M = "keishiki._convert.graph_edges"

GRAPH_EDGES: list[Edge] = [
    Edge(
        "hf-model",
        "onnx",
        f"{_M}:hf_to_onnx",
        ("torch", "hf", "onnx"),
        lossless=False,
        loads_source=True,
        description="causal LM with KV cache (optimum layout), parameter names kept; "
        "--opset, --exporter, --dtype, --external-data; greedy-checked in ORT",
    ),
    Edge(
        "hf-model",
        "torchscript",
        f"{_M}:hf_to_torchscript",
        ("torch", "hf"),
        lossless=False,
        loads_source=True,
        description="traced causal LM (--method trace: logits; trace-kv: with KV cache); "
        "tokenizer travels with a folder OUT",
    ),
    Edge(
        "pytorch",
        "torchscript",
        f"{_M}:module_to_torchscript",
        ("torch",),
        lossless=False,
        loads_source=True,
        description="whole pickled nn.Module (--trust: runs its code), --method trace with "
        "--example-input, or script",
    ),
    Edge(
        "onnx",
        "onnx",
        f"{_M}:onnx_to_onnx",
        ("onnx",),
        description="opset change (onnx.version_converter), embedded <-> external data; "
        "both run in ORT",
    ),
    Edge(
        "onnx",
        "safetensors",
        f"{_M}:onnx_to_safetensors",
        ("onnx", "hf"),
        description="initializers and Constant tensors (external data included), by name",
    ),
]


def _tol(opts: ConvertOptions) -> tuple[float | None, float]:
    return opts.atol, opts.rtol or 0.0


def _files_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def carry_tokenizer(opts: ConvertOptions, out_dir: Path) -> list[str]:
    """Copy ``opts.tokenizer`` (a folder or a tokenizer file) into ``out_dir`` if it lacks one."""
    if not opts.tokenizer or (out_dir / "tokenizer.json").exists():
        return []
    tok = Path(opts.tokenizer)
    if tok.is_file():
        shutil.copy2(tok, out_dir / tok.name)
        return [tok.name]
    if not tok.is_dir():
        raise PathNotFound(tok, f"tokenizer={str(tok)!r}: no such file or folder")
    copied = []
    for name in TOKENIZER_FILES:
        if (tok / name).is_file():
            shutil.copy2(tok / name, out_dir / name)
            copied.append(name)
    return copied


def _sibling_tmp(out: Path, tag: str) -> Path:
    """A hidden working folder beside ``out`` (same file system, removed by the caller)."""
    tmp = out.parent / f".{out.name}.{tag}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


# ---- hf-model -> onnx ---------------------------------------------------------------------


def hf_to_onnx(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``hf-model -> onnx``: export with KV cache, then greedy-compare in ORT.

    A folder ``out`` gets ``model.onnx`` (+ ``model.onnx.data``) and the tokenizer/config
    files; a file ``out`` gets the graph alone (external data needs a folder).
    """
    from . import onnx_export
    from .run_verify import verify_onnx_lm

    src, out = Path(src), Path(out)
    report = StepReport(edge="hf-model -> onnx", src=str(src), out=str(out))
    export_bar = progress(onnx_export.EXPORT_STEPS, "-> onnx", opts.quiet)
    with Timer() as timer, export_bar as adv:
        if out.is_dir():
            facts = onnx_export.export_causal_lm(
                src,
                out,
                opset=opts.opset,
                exporter=opts.exporter or onnx_export.DEFAULT_EXPORTER,
                dtype=opts.dtype,
                external_data=opts.external_data,
                advance=adv,
            )
            facts["side_files"] += carry_tokenizer(opts, out)
            model_path = out / "model.onnx"
        else:
            if opts.external_data or _weights_bytes(src) > onnx_export.TWO_GB:
                raise InvalidRequest(
                    f"{final_name(out)}: external data (needed above 2 GB) needs a folder "
                    f"OUT (drop the .onnx suffix) so the .data file travels "
                    f"with the graph"
                )
            work = _sibling_tmp(out, "export")
            try:
                facts = onnx_export.export_causal_lm(
                    src,
                    work,
                    opset=opts.opset,
                    exporter=opts.exporter or onnx_export.DEFAULT_EXPORTER,
                    dtype=opts.dtype,
                    external_data=False,
                    advance=adv,
                )
                os.replace(work / "model.onnx", out)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            model_path = out
        report.details["onnx"] = facts
        report.warnings += facts["warnings"]
    if opts.verify:
        atol, rtol = _tol(opts)
        with Timer() as verify_timer, _run_both_bar(opts) as adv:
            report.verify = verify_onnx_lm(src, model_path, atol, rtol, advance=adv)
        timer.seconds += verify_timer.seconds
    report.n_tensors = _count_initializers(model_path)
    report.bytes_written = _files_bytes(out)
    report.seconds = timer.seconds
    return report


def _run_both_bar(opts: ConvertOptions):
    """The progress bar of a run-both verification (:data:`.run_verify.RUN_BOTH_STEPS`)."""
    from .run_verify import RUN_BOTH_STEPS

    return progress(RUN_BOTH_STEPS, "verifying", opts.quiet)


def _weights_bytes(model_dir: Path) -> int:
    """Bytes of the weight files of an HF folder (what the graph would embed, before --dtype)."""
    return sum(
        p.stat().st_size
        for p in Path(model_dir).iterdir()
        if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth")
    )


def _count_initializers(model_path: Path) -> int:
    import onnx

    return len(onnx.load(str(model_path), load_external_data=False).graph.initializer)


# ---- -> torchscript -----------------------------------------------------------------------


def hf_to_torchscript(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``hf-model -> torchscript``: trace (or script) the causal LM; greedy-compare."""
    from . import torchscript_export as tse
    from .run_verify import verify_torchscript_lm

    src, out = Path(src), Path(out)
    pt_path = out / "model.pt" if out.is_dir() else out
    report = StepReport(edge="hf-model -> torchscript", src=str(src), out=str(out))
    with Timer() as timer, progress(None, "-> torchscript", opts.quiet):
        facts, model = tse.export_to(
            src,
            pt_path,
            method=opts.method or "trace",
            example_input=opts.example_input or "1x8:int64",
            dtype=opts.dtype,
            side_files_to=out if out.is_dir() else None,
        )
        if out.is_dir():
            facts["side_files"] += carry_tokenizer(opts, out)
        report.details["torchscript"] = facts
    if opts.verify:
        atol, rtol = _tol(opts)
        with Timer() as verify_timer, _run_both_bar(opts) as adv:
            # the model the export loaded is the reference, unless --dtype cast it
            source = None if opts.dtype else model
            report.verify = verify_torchscript_lm(
                src, pt_path, atol, rtol, dtype=facts.get("dtype"), advance=adv, model=source
            )
        timer.seconds += verify_timer.seconds
    report.bytes_written = _files_bytes(out)
    report.n_tensors = _count_ts_params(pt_path)
    report.seconds = timer.seconds
    return report


def module_to_torchscript(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``pytorch -> torchscript``: a whole pickled nn.Module, only with ``--trust``."""
    from . import torchscript_export as tse
    from .run_verify import verify_torchscript_module

    src, out = Path(src), Path(out)
    _refuse_state_dict(src)
    pt_path = out / "model.pt" if out.is_dir() else out
    method = opts.method or "trace"
    # scripting needs no input; tracing does (a token-id default suits LMs)
    example = opts.example_input or (None if method == "script" else "1x8:int64")
    report = StepReport(edge="pytorch -> torchscript", src=str(src), out=str(out))
    with Timer() as timer:
        facts, module = tse.export_to(
            src, pt_path, method=method, example_input=example or "", trust=opts.trust
        )
        report.details["torchscript"] = facts
        report.warnings.append("trust_remote_code=True: the pickle's code ran while loading it")
        if opts.verify:
            atol, rtol = _tol(opts)
            report.verify = verify_torchscript_module(module, pt_path, example, atol, rtol)
    report.bytes_written = _files_bytes(out)
    report.n_tensors = _count_ts_params(pt_path)
    report.seconds = timer.seconds
    return report


def _refuse_state_dict(src: Path) -> None:
    """A state_dict or checkpoint pickle has no code to capture: say so before --trust matters."""
    try:
        from .weights import read_model

        info = read_model(src)
    except Exception:  # the reader's verdict is a hint only; export_to decides
        return
    kind = str((info.details or {}).get(info.format, {}).get("kind", ""))
    if kind and "module" not in kind:
        # the reader's kinds: tensor / checkpoint / state_dict / other
        what = {
            "other": "a pickled object",
            "tensor": "a bare tensor",
            "state_dict": "a state_dict",
            "checkpoint": "a training checkpoint",
        }
        raise InvalidRequest(
            f"{final_name(src)}: holds {what.get(kind, repr(kind))}, not a "
            f"pickled nn.Module: TorchScript "
            f"needs the model's code (convert the weights to safetensors, or "
            f"export from the Hugging Face folder)"
        )


def _count_ts_params(pt_path: Path) -> int:
    import torch

    return len(torch.jit.load(str(pt_path), map_location="cpu").state_dict())


# ---- onnx -> onnx -------------------------------------------------------------------------


def onnx_to_onnx(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``onnx -> onnx``: opset change and/or data layout; both graphs run in ORT."""
    from . import onnx_ops
    from .hf_weights import copy_side_files
    from .run_verify import onnx_is_causal_lm, verify_onnx_pair_graph, verify_onnx_pair_lm

    src, out = Path(src), Path(out)
    if opts.dtype:
        raise InvalidRequest(
            "`dtype` is not supported for onnx -> onnx: re-export from the "
            "Hugging Face folder with `dtype`"
        )
    if opts.opset is None and opts.external_data is None:
        raise InvalidRequest(
            "onnx -> onnx needs opset=N and/or external_data=True / "
            "external_data=False (nothing to change otherwise)"
        )
    src_model = onnx_ops.model_file(src)
    report = StepReport(edge="onnx -> onnx", src=str(src), out=str(out))
    with Timer() as timer:
        if out.is_dir():
            out_model = out / src_model.name
        else:
            if opts.external_data:
                raise InvalidRequest(
                    f"{final_name(out)}: external data needs a folder OUT (drop the .onnx "
                    f"suffix) so the .data file travels with the graph"
                )
            out_model = out
        facts = onnx_ops.rewrite(
            src_model,
            out_model,
            opset=opts.opset,
            external_data=opts.external_data if out.is_dir() else False,
            threshold=opts.external_threshold,
        )
        if out.is_dir():
            facts["side_files"] = copy_side_files(src_model.parent, out)
            facts["test_data"] = _copy_test_data(src_model.parent, out)
        report.details["onnx"] = facts
        if facts["opset"] != facts["opset_from"]:
            report.details["onnx"]["opset_changed"] = f"{facts['opset_from']} -> {facts['opset']}"
        if facts["checker"] != "ok":
            report.warnings.append(facts["checker"])
        if opts.verify:
            atol, rtol = _tol(opts)
            if onnx_is_causal_lm(src_model):
                report.verify = verify_onnx_pair_lm(src_model, out_model, atol, rtol)
            else:
                report.verify = verify_onnx_pair_graph(src_model, out_model, atol, rtol)
            if report.verify.get("method") == "checker-only":
                report.warnings.append(report.verify["reason"])
    report.n_tensors = _count_initializers(out_model)
    report.bytes_written = _files_bytes(out)
    report.seconds = timer.seconds
    return report


def _copy_test_data(src_dir: Path, out_dir: Path) -> list[str]:
    """The ONNX backend-test inputs/outputs (``test_data_set_*``) travel with the model."""
    copied = []
    for data in sorted(src_dir.glob("test_data_set_*")):
        if data.is_dir() and not data.is_symlink():
            shutil.copytree(data, out_dir / data.name)
            copied.append(data.name)
    return copied


# ---- onnx -> safetensors ------------------------------------------------------------------


def onnx_to_safetensors(src: Path, out: Path, opts: ConvertOptions) -> StepReport:
    """Edge ``onnx -> safetensors``: every initializer and Constant tensor, streamed.

    Subgraph tensors are named ``<node>/<attr>/<name>``; initializers recorded by keishiki's
    exporter as stored transposed are transposed back to the PyTorch layout.  Verification
    reads the result with ``safetensors.safe_open`` and compares each tensor with
    ``onnx.numpy_helper.to_array`` of the source (a reader independent of keishiki's).
    """
    from . import onnx_ops
    from .weights import SourceTensors, read_model

    src, out = Path(src), Path(out)
    if out.is_dir():
        raise InvalidRequest(
            f"{final_name(out)}: onnx -> safetensors writes one file; name it *.safetensors"
        )
    src_model = onnx_ops.model_file(src)
    report = StepReport(edge="onnx -> safetensors", src=str(src), out=str(out))
    with Timer() as timer:
        info = read_model(src_model)
        tensors, renamed, transposed = _onnx_tensors(info, src_model)
        st = SourceTensors(
            tensors,
            metadata={"keishiki.source_format": "onnx"},
            warnings=list(info.warnings),
            format="onnx",
        )
        report.bytes_written = _write_safetensors(out, st, opts.dtype)
        report.n_tensors = len(tensors)
        report.warnings += st.warnings
        report.details.update(renamed_subgraph_tensors=renamed, transposed_back=transposed)
        if opts.verify:
            report.verify = _verify_onnx_safetensors(src_model, out, opts.dtype, transposed)
    report.seconds = timer.seconds
    return report


def _write_safetensors(path: Path, st, dtype: str | None) -> int:
    """Stream ``st`` into ``path`` (0-d tensors kept 0-d: np.ascontiguousarray makes them 1-d,
    which ``formats.safetensors.write`` trips over, so this loop uses np.asarray)."""
    import numpy as np

    from ..formats import safetensors as st_format
    from .weights import output_tensors

    tensors = output_tensors(st, dtype)
    with open(path, "wb") as fh:
        fh.write(st_format.build_header([t.info for t in tensors], {"format": "pt", **st.metadata}))
        for lazy in tensors:
            arr = np.asarray(lazy.load(), order="C")
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            if tuple(arr.shape) != tuple(lazy.info.shape) or arr.nbytes != lazy.info.nbytes:
                raise InvalidRequest(
                    f"{lazy.name}: loaded {arr.dtype}{list(arr.shape)}, "
                    f"expected {lazy.info.dtype}{list(lazy.info.shape)}"
                )
            fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))  # no tobytes() copy
            del arr
    return path.stat().st_size


def _onnx_tensors(info, src_model: Path):
    """LazyTensors named uniquely; transposed-weight records undone."""
    from dataclasses import replace

    from ..core.tensor import LazyTensor
    from . import onnx_ops
    from .names import transposed_initializers

    transposed = transposed_initializers(onnx_ops.load_model(src_model, load_external=False))
    out, seen, renamed = [], set(), []
    for t in info.lazy_tensors():
        name = t.name
        graph = (t.info.extra or {}).get("graph")
        if graph:
            name = f"{graph}/{name}"
            renamed.append(name)
        base, n = name, 1
        while name in seen:  # two Constant nodes may share an output name across graphs
            n += 1
            name = f"{base}#{n}"
        seen.add(name)
        # reshape: a scalar stored in a typed field can come back as shape (1,)
        if not graph and name in transposed and len(t.info.shape) == 2:
            meta = replace(t.info, name=name, shape=tuple(reversed(t.info.shape)))
            out.append(LazyTensor(meta, (lambda t=t: t.load().reshape(t.info.shape).T.copy())))
        else:
            out.append(
                LazyTensor(replace(t.info, name=name), (lambda t=t: t.load().reshape(t.info.shape)))
            )
    return out, renamed, sorted(transposed)


def _verify_onnx_safetensors(
    src_model: Path, out: Path, dtype: str | None, transposed: list[str]
) -> dict:
    """Every initializer/Constant of the source, as onnx sees it, vs the file.

    One tensor at a time: the graph is parsed without its external data, and each tensor's
    data is loaded by onnx's own ``load_external_data_for_tensor`` just before it is compared
    and dropped just after (loading the whole model, then holding every array in a dict, took
    4x the model's size).
    """
    import numpy as np
    from onnx import external_data_helper, numpy_helper

    from . import onnx_ops
    from .verify import ReadBack, open_safetensors_rows, safetensors_names
    from .weights import cast_array

    model = onnx_ops.load_model(src_model, load_external=False)
    base_dir = str(src_model.parent)
    rb = ReadBack(library="safetensors.safe_open vs onnx.numpy_helper")
    seen: set[str] = set()
    names, _metadata = safetensors_names(out)
    present = set(names)
    # rows read a block at a time through fresh handles: one handle over the whole output
    # keeps every page it touched mapped (RSS grows to the file's size)
    with open_safetensors_rows(out) as get_rows:
        for name, tensor in _iter_tensors(model.graph, ""):
            if name in seen:  # the writer keeps the first of a repeated name
                continue
            seen.add(name)
            if name not in present:
                rb.missing.append(name)
                continue
            if external_data_helper.uses_external_data(tensor):
                external_data_helper.load_external_data_for_tensor(tensor, base_dir)
            arr = numpy_helper.to_array(tensor)
            tensor.ClearField("raw_data")
            if name in transposed and arr.ndim == 2:
                arr = np.ascontiguousarray(arr.T)
            expected = cast_array(arr, dtype)
            rb.compare_rows(
                name, expected, get_rows(name), original=None if expected is arr else arr
            )
            del arr, expected
        rb.unexpected.extend(sorted(present - seen))
    return rb.result()


def _iter_tensors(graph, prefix: str):
    """(name, TensorProto) of the initializers and Constant values by the names the edge
    writes (same walk as the reader: subgraph tensors under ``<node or OpType_index>/<attr>/``)."""
    for t in graph.initializer:
        yield (f"{prefix}/{t.name}" if prefix else t.name), t
    for index, node in enumerate(graph.node):
        node_id = node.name or f"{node.op_type}_{index}"
        for attr in node.attribute:
            if (
                node.op_type == "Constant"
                and not node.domain
                and attr.name == "value"
                and attr.HasField("t")
            ):
                name = node.output[0] if node.output and node.output[0] else node_id
                yield (f"{prefix}/{name}" if prefix else name), attr.t
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for sub in subgraphs:
                sub_prefix = (
                    f"{prefix}/{node_id}/{attr.name}" if prefix else f"{node_id}/{attr.name}"
                )
                yield from _iter_tensors(sub, sub_prefix)
