"""Every intermediate output of one model run on given token ids, named by module path.

What a backend can expose differs, so each side records :class:`Probe` values:

- PyTorch (a Hugging Face folder, a GGUF dequantized into one): a forward hook on every
  module gives that module's own outputs (``exact``).
- ONNX and TorchScript: the graph's nodes carry the module they came from (ONNX node names
  ``/lm/model/layers.0/mlp/down_proj/MatMul`` or the dynamo exporter's ``name_scopes``
  metadata; TorchScript's inlined call stack).  A module's outputs are then the values
  produced inside its scope and used outside it (:func:`escaping_values`): candidates, of
  which the pairing keeps those whose shapes match the other side's.

:func:`resolve` picks the engine through the runtimes' own ``choose`` and passes every file
through the load gate, as :class:`keishiki.LLM` does.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import InvalidRequest, RuntimeUnavailable


@dataclass
class Probe:
    """One intermediate tensor.

    Attributes:
        module: dotted module path in the model's own naming (``lm.model.layers.0.mlp``).
        index: position among the module's outputs (hooks) or escaping values (graphs).
        value: the tensor, as float32 or wider.
        order: execution order (hook firing, or the producing node's position).
        depth: nesting of ``module`` (a parent finishing on the same value sorts after).
        name: the graph value's name (ONNX / TorchScript), None for a hook.
        exact: the module's own output (a hook) rather than a value leaving its scope.
    """

    module: str
    index: int
    value: np.ndarray
    order: int
    depth: int
    name: str | None = None
    exact: bool = False


@dataclass
class Capture:
    """One side's run: where it came from, how it ran and what it exposed."""

    path: str
    format: str
    backend: str
    precision: str
    probes: list[Probe] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def by_module(self) -> dict[str, list[Probe]]:
        """Probes grouped by module path, modules in first-recorded order."""
        out: dict[str, list[Probe]] = {}
        for probe in self.probes:
            out.setdefault(probe.module, []).append(probe)
        return out


@dataclass
class Side:
    """A model resolved for running: the engine, the file it loads, its folder, tokenizer
    folder and config (after the load gate)."""

    path: Path
    format: str
    backend: str
    model_file: Path
    folder: Path
    tokenizer_dir: Path | None
    config: dict
    precision: str | None = None  # what the weights were stored in, where it differs from
    # what the engine computes in (a GGUF's quantized types, dequantized for torch)


def resolve(path: str | os.PathLike, trust_remote_code: bool = False) -> Side:
    """The engine and files for ``path``, through the runtimes' ``choose`` and the load
    gate (a GGUF file is dequantized into its cached Hugging Face folder first).

    Raises:
        InvalidRequest: not a model keishiki can run (weights without an architecture,
            a missing path); UnsafeFile: the load gate refused it.
    """
    from ..core.gate import admit, check_tree
    from ..runtimes.select import choose
    from ..runtimes.tokenizer import find_tokenizer_dir

    path = Path(path)
    try:
        choice = choose(path)
    except InvalidRequest as exc:
        raise InvalidRequest(f"cannot compare layers: {exc}") from None
    if choice.backend == "vllm":  # hooks need the model object in this process
        choice.backend = "torch"
    fmt, model_file, folder = choice.format, choice.model_file, choice.folder
    precision = None
    if fmt == "gguf":
        from ..inspecting import inspect
        from ..runtimes.gguf_run import hf_folder_for

        admit(model_file, trust=trust_remote_code, purpose="compare layers")
        precision = precision_of_dtypes(inspect(model_file).dtypes)
        model_file = folder = hf_folder_for(model_file)
    admit(model_file, trust=trust_remote_code, purpose="compare layers")
    try:
        tokenizer_dir = find_tokenizer_dir(folder if fmt == "gguf" else path, None)
    except RuntimeUnavailable:
        tokenizer_dir = None
    for checked in {folder, tokenizer_dir or folder}:
        check_tree(checked, recursive=False)
    return Side(
        path, fmt, choice.backend, model_file, folder, tokenizer_dir, _config(folder), precision
    )


def _config(folder: Path) -> dict:
    """``folder/config.json`` ({} when absent or unreadable): for a GGUF the dequantized
    folder's, which states its vocabulary."""
    try:
        value = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def capture(side: Side, token_ids: list[int]) -> Capture:
    """Run ``side`` once on ``token_ids`` (batch 1) and record its intermediates.

    Raises:
        InvalidRequest: the model cannot run on these ids (not a causal LM, an input it
            needs that keishiki cannot feed); RuntimeUnavailable: no way to expose them.
    """
    if side.backend == "onnxruntime":
        from .intermediates_onnx import capture_onnx

        return capture_onnx(side, token_ids)
    if side.backend == "torchscript":
        from .intermediates_torch import capture_torchscript

        return capture_torchscript(side, token_ids)
    from .intermediates_torch import capture_hf

    return capture_hf(side, token_ids)


# loosest first: the precision a model is judged by is that of its least precise weights
_PRECISIONS = (
    "2-bit",
    "3-bit",
    "4-bit",
    "5-bit",
    "6-bit",
    "8-bit",
    "bfloat16",
    "float16",
    "float32",
)
_QUANT_BITS = re.compile(r"^(?:i?q|tq)(\d)")


def precision_of_dtypes(dtypes: Iterable[str]) -> str:
    """The loosest precision among tensor dtypes (``q4_K`` → ``4-bit``, ``q8_0`` →
    ``8-bit``, ``iq2_xs``/``tq1_0`` → ``2-bit``, ``float16``…); float32 when none is
    lower."""
    found = []
    for dtype in dtypes:
        match = _QUANT_BITS.match(dtype.lower())
        if match:
            found.append(f"{max(int(match.group(1)), 2)}-bit")
        elif dtype in _PRECISIONS:
            found.append(dtype)
    return min(found, key=_PRECISIONS.index, default="float32")


# ---- scopes: which values leave a module ------------------------------------------------


def escaping_values(
    nodes: Iterable[tuple[tuple[str, ...], list[str]]],
    consumers: dict[str, list[int]],
    graph_outputs: set[str],
    forwarded: dict[int, int | None] | None = None,
) -> dict[str, list[tuple[str, int]]]:
    """The values each module scope hands to the rest of the graph.

    Args:
        nodes: ``(scope chain, output value names)`` per node in graph order; a chain lists
            the enclosing modules' full paths, outermost first (``("lm", "lm.model", …)``).
        consumers: value name → indices of the nodes that read it.
        graph_outputs: names the graph returns (they leave every scope).
        forwarded: nodes that only pass their input on (a Cast to float32 of a float32
            input, Identity) → the node producing that input (None: a graph input).  A
            scope handing on its own input that way is not computing an output (an RMSNorm
            casting the residual), so such a value is not listed for it.

    Returns:
        module path → ``[(value name, producing node index), ...]`` in graph order: a value
        made inside the module and read outside it (or returned) is one of its outputs.
    """
    nodes = list(nodes)
    chains = [chain for chain, _ in nodes]
    forwarded = forwarded or {}
    out: dict[str, list[tuple[str, int]]] = {}
    for index, (chain, outputs) in enumerate(nodes):
        if not chain:
            continue
        for value in outputs:
            if not value:
                continue
            users = [chains[i] for i in consumers.get(value, [])]
            source = forwarded.get(index, index)
            for depth in range(len(chain)):
                scope = chain[depth]
                if source is None or (source != index and scope not in chains[source]):
                    continue  # the scope's own input, passed through
                returned = value in graph_outputs
                if returned or any(len(u) <= depth or u[depth] != scope for u in users):
                    out.setdefault(scope, []).append((value, index))
    return out


def onnx_scope_chain(name: str, metadata: dict[str, str] | None = None) -> tuple[str, ...]:
    """The module chain of an ONNX node: the dynamo exporter's ``pkg.torch.onnx.name_scopes``
    metadata (full module paths, then the node's own name), else the TorchScript-based
    exporter's node name ``/lm/model/layers.0/mlp/down_proj/MatMul`` (one component per
    module, the op last).  ``()`` for a node outside any module."""
    scopes = (metadata or {}).get("pkg.torch.onnx.name_scopes")
    if scopes:
        import ast

        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            names = None
        if isinstance(names, list) and len(names) >= 2:
            return tuple(str(n) for n in names[1:-1] if n)
    if not name.startswith("/"):
        return ()
    parts = [p for p in name.split("/")[1:-1] if p]
    return tuple(".".join(parts[: i + 1]) for i in range(len(parts)))


_HIER = re.compile(r"([^.()]+)\(([^()]*)\)")


def hierarchy_parts(hierarchy: str) -> list[str]:
    """``lm(LlamaForCausalLM).model(LlamaModel).0(LlamaDecoderLayer)`` → ``[lm, model, 0]``
    (the instance names TorchScript records in an inlined node's call stack)."""
    return [m.group(1) for m in _HIER.finditer(hierarchy)]


def float_array(value: Any) -> np.ndarray | None:
    """``value`` as a numpy float array (float32 or wider), None when it is not a float
    tensor (ids, masks, shapes)."""
    array = np.asarray(value)
    if array.dtype.kind != "f":
        return None
    return array if array.dtype.itemsize >= 4 else array.astype(np.float32)
