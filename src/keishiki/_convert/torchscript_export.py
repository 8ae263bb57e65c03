"""nn.Module → TorchScript (``torch.jit.trace`` or ``torch.jit.script``).

Sources:
- a Hugging Face causal LM folder: ``trace`` records a wrapper whose forward is
  ``model(input_ids, use_cache=False, return_dict=False)[0]`` (input ``input_ids`` [batch, seq],
  output the logits; a runtime recomputes the prefix each step).  ``trace-kv`` records the same
  flat KV-cache interface as the ONNX export (``input_ids, attention_mask, position_ids,
  past_key_values.{i}.key/value`` → ``logits, present.{i}.key/value``), so a runtime can
  decode one token per step.  ``script`` is tried but ``torch.jit.script`` cannot compile
  Hugging Face models (a one-line error says to use trace).
- a whole-module pickle (``torch.save(model)``): loading it runs code named in the file, so
  it is refused unless ``trust=True`` (``--trust``).

Every archive carries ``keishiki.json`` (``torch.jit.save`` extra file) describing its
interface: ``kind`` (``causal-lm`` / ``causal-lm-kv`` / ``module``), input/output names,
``n_layers``, ``kv_heads``, ``head_dim``, ``vocab``.  When the output is a folder (no ``.pt``
suffix) it holds ``model.pt`` plus the tokenizer and config files.
"""

from __future__ import annotations

import json
import warnings as pywarnings
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import InvalidRequest
from .onnx_export import quietly

METHODS = ("trace", "trace-kv", "script")
META_NAME = "keishiki.json"
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8")


def parse_example_input(spec: str) -> list[tuple[tuple[int, ...], str]]:
    """``"1x8:int64"`` → ``[((1, 8), "int64")]``; several inputs separated by commas.

    Raises:
        InvalidRequest: a malformed spec (the message shows the expected form).
    """
    inputs = []
    for part in spec.split(","):
        dims, _, dtype = part.strip().partition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        dtype = dtype or "float32"
        if (
            not shape
            or any(d <= 0 for d in shape)
            or dtype not in (*INT_DTYPES, "float32", "float16", "bfloat16", "float64", "bool")
        ):
            raise InvalidRequest(
                f"example_input={spec!r}: expected SHAPE:DTYPE such as "
                f"'1x8:int64' or '1x3x224x224:float32' (comma-separated)"
            )
        inputs.append((shape, dtype))
    return inputs


def make_example_tensors(spec: str, high: int = 2, seed: int = 0) -> list:
    """Seeded tensors for ``spec``: integers in [0, high), floats standard normal."""
    torch = require("torch")
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for shape, dtype in parse_example_input(spec):
        tdtype = getattr(torch, dtype)
        if dtype in INT_DTYPES:
            tensors.append(torch.randint(0, max(high, 1), shape, generator=gen, dtype=tdtype))
        elif dtype == "bool":
            tensors.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            tensors.append(torch.randn(shape, generator=gen).to(tdtype))
    return tensors


def _logits_wrapper(model):
    torch = require("torch")

    class CausalLMLogits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids, use_cache=False, return_dict=False)[0]

    return CausalLMLogits(model).eval()


def _trace(module, inputs: tuple):
    torch = require("torch")
    with pywarnings.catch_warnings(), torch.no_grad():
        pywarnings.simplefilter("ignore")  # TracerWarnings and the jit deprecation notice
        return torch.jit.trace(module, inputs, check_trace=False)


def _script(module, what: str):
    torch = require("torch")
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            return torch.jit.script(module)
    except Exception as exc:  # TorchScript's frontend raises many types
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidRequest(
            f"torch.jit.script cannot compile {what}: {reason} "
            f"(use method=trace with `example_input`)"
        ) from None


def _hf_traced(model_dir: Path, method: str, example_input: str, dtype: str | None):
    """(ScriptModule, keishiki.json facts, the eager model it was traced from) for a Hugging
    Face causal LM folder (the archive shares the eager model's weights: keeping it costs
    no memory)."""
    from . import onnx_export

    model = onnx_export.load_causal_lm(model_dir, dtype)
    shape = onnx_export.model_shape(model.config)
    facts: dict[str, Any] = {
        **shape,
        "source": "hf-model",
        "architecture": (model.config.architectures or [None])[0],
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    if method == "trace-kv":
        module = onnx_export._make_wrapper(model)
        args = onnx_export.dummy_inputs(shape, next(model.parameters()).dtype)
        inputs, outputs = onnx_export.io_names(shape["n_layers"])
        kv_facts = {
            **facts,
            "kind": "causal-lm-kv",
            "input_names": inputs,
            "output_names": outputs,
            "kv_cache": True,
        }
        return _trace(module, args), kv_facts, model
    wrapper = _logits_wrapper(model)
    facts.update(
        kind="causal-lm", input_names=["input_ids"], output_names=["logits"], kv_cache=False
    )
    if method == "script":
        return _script(wrapper, f"{model_dir.name} ({facts['architecture']})"), facts, model
    (ids,) = make_example_tensors(example_input, high=shape["vocab"])
    if ids.dim() != 2 or ids.dtype.is_floating_point:
        raise InvalidRequest(
            f"example_input={example_input!r}: a causal LM takes token ids "
            f"shaped BATCHxSEQ with an integer dtype, e.g. '1x8:int64'"
        )
    # tracing at batch 1 bakes the batch size into the graph; 2 rows keep it symbolic
    if ids.shape[0] == 1:
        ids = ids.repeat(2, 1)
    facts["traced_input_shape"] = list(ids.shape)
    return _trace(wrapper, (ids,)), facts, model


def load_module_pickle(path: Path, trust: bool):
    """``torch.load(weights_only=False)`` of a whole-module pickle, only when ``trust``.

    Raises:
        InvalidRequest: ``trust`` is False (the message names ``trust_remote_code=True``), or
            the file holds
            no ``nn.Module``.
    """
    if not trust:
        raise InvalidRequest(
            f"{path}: loading a whole-module pickle runs code named in the "
            f"file; pass trust_remote_code=True only if you trust its author"
        )
    torch = require("torch", purpose="load the pickled module")
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:  # the pickle may need classes that are not importable here
            raise InvalidRequest(
                f"{path}: cannot load the pickled module even with trust_remote_code=True: "
                f"{str(exc).splitlines()[0][:200]}"
            ) from None
    if not isinstance(obj, torch.nn.Module):
        raise InvalidRequest(
            f"{path}: holds a {type(obj).__name__}, not an nn.Module; "
            f"TorchScript needs the model's code (convert weights to "
            f"safetensors instead)"
        )
    return obj.eval()


def _module_traced(path: Path, method: str, example_input: str, trust: bool):
    module = load_module_pickle(path, trust)
    facts: dict[str, Any] = {
        "source": "pytorch-module",
        "kind": "module",
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "example_input": example_input or None,
    }
    if method == "script":
        return _script(module, facts["class"]), module, facts
    if method == "trace-kv":
        raise InvalidRequest("method=trace-kv is for Hugging Face causal LM folders")
    inputs = tuple(make_example_tensors(example_input))
    try:
        return _trace(module, inputs), module, facts
    except Exception as exc:  # a wrong input shape/dtype fails inside the model's forward
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidRequest(
            f"{path}: tracing {facts['class']} with example_input="
            f"{example_input!r} failed: {reason} (give the shape and dtype "
            f"its forward takes, e.g. '1x3x224x224:float32')"
        ) from None


def output_paths(out: Path) -> tuple[Path, bool]:
    """(the .pt file to write, whether ``out`` is a folder) — a ``.pt``/``.pth`` suffix = a file."""
    out = Path(out)
    if out.is_dir() or out.suffix.lower() not in (".pt", ".pth", ".ts", ".jit", ".torchscript"):
        return out / "model.pt", True
    return out, False


@quietly
def export_to(
    src: Path,
    pt_path: Path,
    *,
    method: str = "trace",
    example_input: str = "1x8:int64",
    trust: bool = False,
    dtype: str | None = None,
    side_files_to: Path | None = None,
):
    """Write the archive to ``pt_path``; returns (facts, the eager module for verification:
    the pickled module, or the HF model as loaded, cast by ``dtype`` when given).

    ``side_files_to``: a folder receiving the HF source's tokenizer and config files.
    """
    torch = require("torch", purpose="write TorchScript")
    if method not in METHODS:
        raise InvalidRequest(f"method={method!r}: choose one of {', '.join(METHODS)}")
    src, pt_path = Path(src), Path(pt_path)
    if src.is_dir():
        scripted, facts, module = _hf_traced(src, method, example_input, dtype)
    else:
        if dtype:
            raise InvalidRequest(
                "`dtype` applies to Hugging Face folders; cast the module before saving it"
            )
        scripted, module, facts = _module_traced(src, method, example_input, trust)
    facts.update(method=method, torch=torch.__version__)
    pt_path.parent.mkdir(parents=True, exist_ok=True)
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        torch.jit.save(scripted, str(pt_path), _extra_files={META_NAME: json.dumps(facts)})
    side = []
    if side_files_to is not None and src.is_dir():
        from .hf_weights import copy_side_files

        side = copy_side_files(src, side_files_to)
    return {**facts, "path": str(pt_path), "side_files": side}, module


def export_torchscript(
    src: Path,
    out: Path,
    *,
    method: str = "trace",
    example_input: str = "1x8:int64",
    trust: bool = False,
    dtype: str | None = None,
) -> dict:
    """Write a TorchScript archive of ``src`` (an HF causal LM folder or a module pickle).

    Args:
        src: a Hugging Face model folder, or a ``torch.save(model)`` whole-module pickle.
        out: a ``.pt`` file, or a folder (gets ``model.pt`` + tokenizer/config files).
        method: ``trace`` (logits only), ``trace-kv`` (flat KV-cache interface, HF only) or
            ``script``.
        example_input: ``SHAPE:DTYPE[,…]`` tracing inputs (token ids for LMs).
        trust: allow loading a whole-module pickle (runs code named in the file).
        dtype: cast an HF model's weights first (``float16``, ``bfloat16``, ``float32``).

    Returns:
        Facts: ``path`` (the .pt written), ``kind``, ``method``, ``input_names``,
        ``output_names``, ``kv_cache``, model shape and ``dtype`` for LMs, ``side_files``.

    Raises:
        InvalidRequest: unknown method, a pickle without ``trust``, a malformed example input,
            a model ``torch.jit.script`` cannot compile or that fails to trace.
    """
    pt_path, is_folder = output_paths(Path(out))
    facts, _module = export_to(
        src,
        pt_path,
        method=method,
        example_input=example_input,
        trust=trust,
        dtype=dtype,
        side_files_to=pt_path.parent if is_folder else None,
    )
    return facts


def read_meta(pt_path: Path) -> dict:
    """The ``keishiki.json`` facts stored in a TorchScript archive ({} when absent)."""
    import zipfile

    from ..core.source import ZIP_ERRORS

    try:
        with zipfile.ZipFile(pt_path) as zf:
            for name in zf.namelist():
                if name.endswith("/extra/" + META_NAME):
                    return json.loads(zf.read(name))
    except (*ZIP_ERRORS, ValueError, RecursionError):  # (a file's JSON: anything)
        pass
    return {}
