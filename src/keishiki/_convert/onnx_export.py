"""Hugging Face causal LM → ONNX with a KV cache, in the layout optimum and ORT tooling expect.

Inputs ``input_ids`` [batch, seq], ``attention_mask`` [batch, past+seq], ``position_ids``
[batch, seq], ``past_key_values.{i}.key/value`` [batch, kv_heads, past, head_dim]; outputs
``logits`` [batch, seq, vocab] and ``present.{i}.key/value`` [batch, kv_heads, past+seq,
head_dim].  An empty past (past = 0) works for the first step.

Default exporter: ``torchscript`` (``torch.onnx.export(dynamo=False)``), because on torch 2.13
it writes exactly the opset asked for (the dynamo exporter silently writes 18 when asked for
14 or 17), keeps parameter names when constant folding is off, exports a tiny Llama in about a
second and needs no onnxscript.  ``dynamo`` is available (``optimize=False`` keeps names); its
opset is checked and converted with ``onnx.version_converter`` when it differs.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import sys
import tempfile
import warnings as pywarnings
from pathlib import Path
from typing import Any, Callable

from .._optional import require
from ..errors import InvalidRequest, KeishikiError
from .hf_weights import copy_side_files

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"
DEFAULT_OPSET = 17
TWO_GB = 2 * 1024**3
WRAPPER_PREFIX = "lm."  # the wrapper's attribute name, stripped from initializer names
TORCH_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def load_causal_lm(model_dir: Path, dtype: str | None = None):
    """``AutoModelForCausalLM.from_pretrained`` in eval mode, eager attention, on CPU."""
    torch = require("torch", purpose="export the model")
    transformers = require("transformers", purpose="load the Hugging Face model")
    torch_dtype = getattr(torch, _dtype_name(dtype)) if dtype else None
    try:
        with quiet_transformers(transformers):
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=torch_dtype, attn_implementation="eager"
            )
    except (ValueError, OSError, KeyError) as exc:
        raise InvalidRequest(
            f"{model_dir}: cannot load as a causal LM with transformers: {str(exc).splitlines()[0]}"
        ) from None
    return model.eval()


@contextlib.contextmanager
def quiet_transformers(transformers):
    """No "Loading weights" progress bar or config notices on stderr while loading."""
    tlog = transformers.utils.logging
    verbosity = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        if bars:
            tlog.enable_progress_bar()


def quietly(fn):
    """Decorator: run ``fn`` under :func:`quiet_transformers` when transformers is installed."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .._optional import available

        if not available("transformers"):
            return fn(*args, **kwargs)
        with quiet_transformers(require("transformers")):
            return fn(*args, **kwargs)

    return wrapper


def _dtype_name(dtype: str) -> str:
    if dtype not in TORCH_DTYPES:
        raise InvalidRequest(f"dtype={dtype!r}: choose one of float32, float16, bfloat16")
    return TORCH_DTYPES[dtype]


def model_shape(config) -> dict[str, int]:
    """n_layers, kv_heads, head_dim and vocab of a transformers config."""
    text = getattr(config, "get_text_config", lambda: config)()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return {
        "n_layers": text.num_hidden_layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab": text.vocab_size,
    }


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the KV-cache layout for ``n_layers`` layers."""
    inputs = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["logits"]
    for i in range(n_layers):
        inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    return inputs, outputs


def _make_wrapper(model):
    """An nn.Module taking flat tensors, building a DynamicCache, returning flat presents."""
    torch = require("torch")
    transformers = require("transformers")

    class CausalLMWithFlatCache(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm  # WRAPPER_PREFIX: initializers come out as "lm.<param>"

        def forward(self, input_ids, attention_mask, position_ids, *past):
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
            cache = transformers.DynamicCache(pairs, config=self.lm.config)
            # transformers 5.x names the cache argument ``cache`` (was past_key_values)
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                return_dict=True,
            )
            flat = []
            for layer in out.cache.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    return CausalLMWithFlatCache(model).eval()


def dummy_inputs(shape: dict[str, int], dtype, batch: int = 2, seq: int = 3, past: int = 2):
    """Example inputs for tracing: a non-empty past so no axis is specialised to 0 or 1."""
    torch = require("torch")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab"], (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, -1).contiguous()
    kv = []
    for _ in range(shape["n_layers"]):
        for _ in range(2):
            kv.append(
                torch.randn(batch, shape["kv_heads"], past, shape["head_dim"], generator=gen).to(
                    dtype
                )
            )
    return (ids, mask, pos, *kv)


def _dynamic_axes(n_layers: int) -> dict[str, dict[int, str]]:
    axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    for i in range(n_layers):
        for kind in ("key", "value"):
            axes[f"past_key_values.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length"}
            axes[f"present.{i}.{kind}"] = {0: "batch_size", 2: "total_sequence_length"}
    return axes


def _torch_export(wrapper, args, path: Path, exporter: str, opset: int, n_layers: int) -> None:
    torch = require("torch")
    inputs, outputs = io_names(n_layers)
    kwargs: dict[str, Any] = dict(
        input_names=inputs,
        output_names=outputs,
        opset_version=opset,
        dynamic_axes=_dynamic_axes(n_layers),
    )
    if exporter == "torchscript":
        # constant folding would rename Linear weights to onnx::MatMul_<N> (transposed)
        kwargs.update(dynamo=False, do_constant_folding=False)
    else:
        require("onnxscript", purpose="use the dynamo ONNX exporter")
        # torch.export cannot translate dynamic_axes for *past; give dynamic_shapes by argument
        # name instead (symbol names are renamed afterwards by name_dynamic_axes).
        dyn = torch.export.Dim.DYNAMIC
        del kwargs["dynamic_axes"]
        kwargs["dynamic_shapes"] = {
            "input_ids": {0: dyn, 1: dyn},
            "attention_mask": {0: dyn, 1: dyn},
            "position_ids": {0: dyn, 1: dyn},
            "past": tuple({0: dyn, 2: dyn} for _ in range(2 * n_layers)),
        }
        # the optimizer renames weights to val_<N>; without it names survive
        kwargs.update(dynamo=True, optimize=False, external_data=False, verbose=False)
    # torch.onnx logs progress and (dynamo) a failed internal opset conversion: keishiki
    # reports the opset it finds in the file instead, so keep the terminal quiet
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with (
            pywarnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            _native_stdout_silenced(),
        ):
            pywarnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(wrapper, args, str(path), **kwargs)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _native_stdout_silenced():
    """Point file descriptor 1 at /dev/null while torch exports.

    On a failed TorchScript-based export torch's C++ logger prints the whole IR graph
    ("Torch IR graph at exception: …", hundreds of lines) straight to fd 1, past Python's
    ``sys.stdout``: it would land in the middle of ``--json`` output or a pipe.
    """
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 at all: nothing to protect
        yield
        return
    try:
        if sys.__stdout__ is not None:
            sys.__stdout__.flush()  # what Python already wrote goes out before the swap
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def name_dynamic_axes(onnx_model, n_layers: int) -> None:
    """Give the graph's dynamic dims the optimum names (the dynamo exporter writes ``s10``…)."""
    axes = _dynamic_axes(n_layers)
    for value in list(onnx_model.graph.input) + list(onnx_model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for index, name in axes.get(value.name, {}).items():
            if index < len(dims):
                dims[index].dim_param = name


def check_forward(wrapper, args, model_dir: Path, n_layers: int) -> None:
    """Run the flat-cache wrapper once in eager mode: a model that is not a decoder-only LM
    with a DynamicCache fails here with a clear message instead of inside an exporter.

    Raises:
        InvalidRequest: the forward fails or returns no cache for every layer.
    """
    torch = require("torch")
    arch = (getattr(wrapper.lm.config, "architectures", None) or ["this model"])[0]
    try:
        with torch.no_grad():
            outputs = wrapper(*args)
    except Exception as exc:  # transformers raises many types for unsupported cache use
        raise InvalidRequest(
            f"{model_dir}: {arch} cannot run with a KV cache ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}); "
            f"keishiki exports decoder-only causal LMs to ONNX"
        ) from None
    if len(outputs) != 1 + 2 * n_layers:
        raise InvalidRequest(
            f"{model_dir}: {arch} returned {len(outputs) - 1} cache tensors for "
            f"{n_layers} layers; keishiki exports decoder-only causal LMs"
        )


def written_opset(onnx_model) -> int:
    """The default-domain opset a ModelProto declares."""
    for entry in onnx_model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise KeishikiError("the ONNX model declares no default-domain opset")


def fix_names(onnx_model, state_dict) -> dict[str, int]:
    """Rename wrapper-prefixed and exporter-generated initializers to parameter names."""
    from . import names

    n_prefixed = names.rename_initializers(
        onnx_model, names.strip_prefix_mapping(onnx_model, WRAPPER_PREFIX)
    )
    n_matched = names.rename_initializers(onnx_model, names.map_onnx_names(onnx_model, state_dict))
    return {
        "renamed_prefix": n_prefixed,
        "renamed_by_value": n_matched,
        "generated_left": len(names.generated_names(onnx_model)),
    }


def save_onnx(onnx_model, path: Path, external_data: bool) -> None:
    """Save ``onnx_model`` to ``path``, its tensors in ``<name>.data`` beside it when asked."""
    onnx = require("onnx")
    if external_data:
        onnx.save_model(
            onnx_model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(onnx_model, str(path))


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.state_dict().values())


@quietly
def export_causal_lm(
    model_dir: Path,
    out_dir: Path,
    *,
    opset: int | None = None,
    exporter: str = DEFAULT_EXPORTER,
    dtype: str | None = None,
    external_data: bool | None = None,
    advance: Callable[..., None] | None = None,
) -> dict:
    """Export a Hugging Face causal LM folder to ``out_dir/model.onnx`` with a KV cache.

    Args:
        model_dir: a Hugging Face model folder (config.json + weights).
        out_dir: the folder to write (created; ``model.onnx``, maybe ``model.onnx.data``, and
            the tokenizer/config/generation-config files).
        opset: the ONNX opset to write (default 17).
        exporter: ``"torchscript"`` (default, see the module docstring) or ``"dynamo"``.
        dtype: ``float32``/``float16``/``bfloat16`` to cast the weights first (default: as saved).
        external_data: store tensors in ``model.onnx.data``; default only above 2 GB.
        advance: ``advance(n, description)`` as each of the :data:`EXPORT_STEPS` begins
            (a progress bar).

    Returns:
        Facts: ``opset`` (written), ``opset_requested``, ``exporter`` (the one that produced the
        file), ``input_names``, ``output_names``, ``n_layers``, ``kv_heads``, ``head_dim``,
        ``vocab``, ``external_data``, ``files``, ``names`` (rename counts), ``warnings``.

    Raises:
        InvalidRequest: unknown exporter/dtype, a folder transformers cannot load.
        MissingDependency: torch, transformers or onnx is not installed.
    """
    onnx = require("onnx", purpose="export to ONNX")
    torch = require("torch", purpose="export to ONNX")
    if exporter not in EXPORTERS:
        raise InvalidRequest(f"exporter={exporter!r}: choose one of {', '.join(EXPORTERS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    opset_requested = opset or DEFAULT_OPSET
    step = _stepper(advance)
    step("loading the model")
    model = load_causal_lm(model_dir, dtype)
    shape = model_shape(model.config)
    weight_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    if external_data is None:
        external_data = _param_bytes(model) > TWO_GB
    state_dict = dict(model.state_dict())
    warns: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = _make_wrapper(model)
    args = dummy_inputs(shape, next(model.parameters()).dtype)
    check_forward(wrapper, args, model_dir, shape["n_layers"])
    step(f"exporting ({exporter})")
    onnx_model, used = _export_with_fallback(
        wrapper, args, out_dir, exporter, opset_requested, shape["n_layers"], warns
    )
    del wrapper
    step("naming the weights")
    name_facts = fix_names(onnx_model, state_dict)
    # the torch weights are no longer needed: free them before serialising (peak memory)
    del model, state_dict
    gc.collect()
    if name_facts["generated_left"]:
        warns.append(
            f"{name_facts['generated_left']} initializers keep exporter-generated "
            f"names (no parameter has their value)"
        )
    step("saving")
    save_onnx(onnx_model, out_dir / "model.onnx", external_data)
    del onnx_model
    step("onnx.checker")
    onnx.checker.check_model(str(out_dir / "model.onnx"))
    copied = copy_side_files(model_dir, out_dir)
    inputs, outputs = io_names(shape["n_layers"])
    final = onnx.load(str(out_dir / "model.onnx"), load_external_data=False)
    return {
        "opset": written_opset(final),
        "opset_requested": opset_requested,
        "exporter": used,
        "exporter_requested": exporter,
        "input_names": [i.name for i in final.graph.input],
        "output_names": [o.name for o in final.graph.output],
        "expected_input_names": inputs,
        "expected_output_names": outputs,
        **shape,
        "dtype": weight_dtype,
        "external_data": external_data,
        "files": sorted(p.name for p in out_dir.iterdir()),
        "side_files": copied,
        "names": name_facts,
        "warnings": warns,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }


EXPORT_STEPS = 5  # the steps :func:`export_causal_lm` reports to its ``advance``


def _stepper(advance: Callable[..., None] | None) -> Callable[[str], None]:
    """``step(description)``: the previous step is done (one unit), this one begins."""
    count = [0]

    def step(description: str) -> None:
        if advance is not None:
            advance(1 if count[0] else 0, description=description)
        count[0] += 1

    return step


def _export_with_fallback(
    wrapper, args, out_dir: Path, exporter: str, opset: int, n_layers: int, warns: list[str]
):
    """Export, then make sure the opset written is the one asked for.

    Order: the chosen exporter; if its opset differs, ``onnx.version_converter``; if that
    fails, the other exporter.  Returns (ModelProto with external data loaded, exporter used).
    """
    onnx = require("onnx")
    from . import onnx_ops

    errors = []
    for attempt in (exporter, *[e for e in EXPORTERS if e != exporter]):
        with tempfile.TemporaryDirectory(prefix=".keishiki-export-", dir=out_dir) as tmp:
            path = Path(tmp) / "model.onnx"
            try:
                _torch_export(wrapper, args, path, attempt, opset, n_layers)
            except KeishikiError:
                raise
            except Exception as exc:  # exporters raise anything; try the other one
                errors.append(f"{attempt}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                warns.append(f"the {attempt} exporter failed ({errors[-1]})")
                continue
            onnx_model = onnx.load(str(path))  # loads external data written by the exporter
        name_dynamic_axes(onnx_model, n_layers)
        got = written_opset(onnx_model)
        if got == opset:
            return onnx_model, attempt
        warns.append(f"the {attempt} exporter wrote opset {got} when asked for {opset}")
        try:
            onnx_model = onnx_ops.convert_opset_proto(onnx_model, opset)
            warns.append(f"converted opset {got} → {opset} with onnx.version_converter")
            return onnx_model, attempt
        except KeishikiError as exc:
            warns.append(f"{exc}; trying the other exporter")
            errors.append(f"{attempt}: opset {got} instead of {opset}")
    raise InvalidRequest(
        f"could not export at opset {opset}: "
        + "; ".join(errors)
        + " (try another `opset` or `exporter`)"
    )
