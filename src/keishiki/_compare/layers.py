"""Layer by layer: run two models on the same token ids and find the first module whose
output differs beyond tolerance.

>>> report = compare_layers("tiny-llama/", "tiny-llama-onnx/model.onnx")
>>> report.first_divergence, report.exit_code
(None, 0)

1. Both sides run once on A's tokenization of the prompt, every intermediate exposed
   (:mod:`keishiki._compare.intermediates`: hooks for PyTorch, every node output marked for
   ONNX, the inlined graph for TorchScript).
2. Modules are paired by path as tensors are (:func:`keishiki.mapping.names.prefix_pairs`:
   the same path, or equal once a wrapper's prefix such as the exporters' ``lm.`` is
   dropped).  Within a module, outputs pair by shape, size-1 dims squeezed; where one side
   lists several same-shaped candidates, the last ones (the module's results) are taken.
3. Each pair: max abs error, relative error (max abs / max |A|, the run-both verifier's
   definition) and cosine similarity.  A pair is over tolerance when
   ``max_abs > atol + rtol * max|A|``; rows follow A's execution order and the first one
   over tolerance is the first divergence.

The default ``rtol`` follows the looser precision of the two sides (:data:`TOLERANCE`):
two float32 runtimes agree to ~1e-6, a quantized model's layers drift by a few percent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from .intermediates import Capture, Probe

SCHEMA = "keishiki.compare.layers/1"

# default rtol (relative to max|A| of each intermediate) by the precision a side computes
# in: float runtimes differ by rounding; weights quantized to N bits by ~2^-N per layer,
# growing through the layers
TOLERANCE = {
    "float32": 1e-3,
    "float16": 2e-2,
    "bfloat16": 5e-2,
    "8-bit": 0.1,
    "6-bit": 0.15,
    "5-bit": 0.15,
    "4-bit": 0.3,
    "3-bit": 0.5,
    "2-bit": 0.5,
}
DEFAULT_ATOL = 1e-6  # so an all-zero intermediate is not "diverged" by a rounding error


def default_rtol(precision_a: str, precision_b: str) -> float:
    """The looser of the two sides' tolerances (unknown precisions count as float32)."""
    return max(
        TOLERANCE.get(precision_a, TOLERANCE["float32"]),
        TOLERANCE.get(precision_b, TOLERANCE["float32"]),
    )


@dataclass
class LayerDiff:
    """One paired intermediate.

    Attributes:
        module, module_b: the module path on each side; index: A's output position.
        name_a, name_b: graph value names where the side is a graph.
        shape_a, shape_b: the tensors' shapes (equal once size-1 dims are squeezed).
        max_abs_diff, max_rel_diff, cosine: the errors (rel = max abs / max|A|).
        ok: within ``atol + rtol * max|A|`` (NaN where A has none fails).
    """

    module: str
    module_b: str
    index: int
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    cosine: float
    ok: bool
    order: int = 0
    name_a: str | None = None
    name_b: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "module_b": self.module_b,
            "index": self.index,
            "name_a": self.name_a,
            "name_b": self.name_b,
            "shape_a": list(self.shape_a),
            "shape_b": list(self.shape_b),
            "max_abs_diff": _finite(self.max_abs_diff),
            "max_rel_diff": _finite(self.max_rel_diff),
            "cosine": _finite(self.cosine),
            "ok": self.ok,
        }


def _finite(x: float) -> float | str:
    """JSON has no inf/NaN: those become strings."""
    return x if np.isfinite(x) else str(x)


@dataclass
class LayerReport:
    """What :func:`compare_layers` found; ``rows`` are in A's execution order."""

    a: Capture
    b: Capture
    prompt: str
    token_ids: list[int]
    atol: float
    rtol: float
    rtol_source: str
    rows: list[LayerDiff]
    unpaired_a: list[str] = field(default_factory=list)
    unpaired_b: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> LayerDiff | None:
        """The first row over tolerance, None when every row is within it."""
        return next((row for row in self.rows if not row.ok), None)

    @property
    def verdict(self) -> str:
        return "within tolerance" if self.first_divergence is None else "diverged"

    @property
    def exit_code(self) -> int:
        """0 when every paired intermediate is within tolerance, 1 when one diverges."""
        return 0 if self.first_divergence is None else 1

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {
            "schema": SCHEMA,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "a": _side(self.a),
            "b": _side(self.b),
            "prompt": self.prompt,
            "prompt_token_ids": self.token_ids,
            "atol": self.atol,
            "rtol": self.rtol,
            "rtol_source": self.rtol_source,
            "n_pairs": len(self.rows),
            "n_over_tolerance": sum(not r.ok for r in self.rows),
            "first_divergence": None
            if first is None
            else {"position": self.rows.index(first), **first.to_dict()},
            "layers": [r.to_dict() for r in self.rows],
            "unpaired_a": self.unpaired_a,
            "unpaired_b": self.unpaired_b,
        }


def _side(capture: Capture) -> dict[str, Any]:
    return {
        "path": capture.path,
        "format": capture.format,
        "backend": capture.backend,
        "precision": capture.precision,
        "n_intermediates": len(capture.probes),
        "notes": capture.notes,
    }


def diff_arrays(
    a: np.ndarray, b: np.ndarray, atol: float, rtol: float
) -> tuple[float, float, float, bool]:
    """(max abs, max abs / max|a|, cosine, within ``atol + rtol * max|a|``) in float64.
    A NaN or infinity counts as diverged unless the other side has the same there (NaN
    against NaN, +inf against +inf)."""
    a64 = a.astype(np.float64).reshape(-1)
    b64 = b.astype(np.float64).reshape(-1)
    finite = np.isfinite(a64)
    odd = ~(finite & np.isfinite(b64))
    if np.any(odd):
        xa, xb = a64[odd], b64[odd]
        if not np.all((xa == xb) | (np.isnan(xa) & np.isnan(xb))):
            return float("inf"), float("inf"), float("nan"), False
    a64, b64 = a64[finite], b64[finite]
    if not a64.size:
        return 0.0, 0.0, 1.0, True
    max_abs = float(np.max(np.abs(a64 - b64)))
    ref = float(np.max(np.abs(a64)))
    rel = max_abs / ref if ref else (0.0 if max_abs == 0 else float("inf"))
    na, nb = float(np.linalg.norm(a64)), float(np.linalg.norm(b64))
    cosine = float(a64 @ b64 / (na * nb)) if na and nb else (1.0 if na == nb else 0.0)
    return max_abs, rel, cosine, max_abs <= atol + rtol * ref


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def pair_modules(a: Capture, b: Capture) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(A path, B path) pairs by name, as tensors are paired (exact, then wrapper and
    one-sided dotted prefixes), plus the modules left unpaired on each side."""
    from ..core.tensor import TensorInfo
    from ..mapping.names import prefix_pairs

    mods_a, mods_b = a.by_module(), b.by_module()
    pairs = [(m, m) for m in mods_a if m in mods_b]
    # module paths stand in for tensor names; one element each so counts never veto a pair
    left = {m: TensorInfo(m, "float32", (), 0) for m in mods_a if m not in mods_b}
    right = {m: TensorInfo(m, "float32", (), 0) for m in mods_b if m not in mods_a}
    pairs += prefix_pairs(left, right)
    paired_a, paired_b = {p[0] for p in pairs}, {p[1] for p in pairs}
    return (
        pairs,
        [m for m in mods_a if m not in paired_a],
        [m for m in mods_b if m not in paired_b],
    )


def pair_outputs(probes_a: list[Probe], probes_b: list[Probe]) -> list[tuple[Probe, Probe]]:
    """Pair one module's outputs.

    Two graphs (an ONNX file and its quantized copy) first pair values of the same name.
    The rest pair by squeezed shape: as many of a shape as the side holding the module's
    own outputs (hooks) has, else one, taken from the end of a graph's list (its last
    values are the module's results).  Where both sides hold several of one shape (rotary
    cos and sin, a layer's key and value), each is paired with the other side's most
    similar one (cosine), since graph order need not follow the module's return order.
    """
    out = []
    exact_a = any(p.exact for p in probes_a)
    exact_b = any(p.exact for p in probes_b)
    if not exact_a and not exact_b:
        by_name = {p.name: p for p in probes_b}
        out = [
            (p, by_name[p.name])
            for p in probes_a
            if p.name in by_name
            and _squeezed(p.value.shape) == _squeezed(by_name[p.name].value.shape)
        ]
        if out:
            return out
    for shape in dict.fromkeys(_squeezed(p.value.shape) for p in probes_a):
        group_a = [p for p in probes_a if _squeezed(p.value.shape) == shape]
        group_b = [p for p in probes_b if _squeezed(p.value.shape) == shape]
        if exact_a or exact_b:
            count = min(len(group_a if exact_a else group_b), len(group_a), len(group_b))
        else:
            count = min(1, len(group_a), len(group_b))
        if not count:
            continue
        chosen_a = group_a[-count:]
        if len(group_b) > 1 and len(group_a) > 1:
            out += _most_similar(chosen_a, group_b)
        else:
            out += list(zip(chosen_a, group_b[-count:]))
    return out


def _most_similar(group_a: list[Probe], group_b: list[Probe]) -> list[tuple[Probe, Probe]]:
    """Greedy pairing by cosine similarity, highest first; in A's order."""

    def cosine(x: Probe, y: Probe) -> float:
        a, b = x.value.astype(np.float64).ravel(), y.value.astype(np.float64).ravel()
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float(np.nan_to_num(a @ b / norm)) if norm else 0.0

    scores = sorted(
        ((cosine(x, y), i, j) for i, x in enumerate(group_a) for j, y in enumerate(group_b)),
        reverse=True,
    )
    taken_a: dict[int, int] = {}
    taken_b: set[int] = set()
    for _score, i, j in scores:
        if i not in taken_a and j not in taken_b:
            taken_a[i] = j
            taken_b.add(j)
    return [(group_a[i], group_b[taken_a[i]]) for i in sorted(taken_a)]


def diff_captures(
    a: Capture, b: Capture, atol: float, rtol: float
) -> tuple[list[LayerDiff], list[str], list[str]]:
    """Every paired intermediate of ``a`` and ``b`` compared, in A's execution order."""
    pairs, unpaired_a, unpaired_b = pair_modules(a, b)
    mods_a, mods_b = a.by_module(), b.by_module()
    rows = []
    seen: set[tuple[str, str]] = set()
    # innermost modules first: a graph value leaving several scopes is listed once, under
    # the deepest (q_proj's MatMul, not also self_attn, layers.0, model...)
    for module_a, module_b in sorted(pairs, key=lambda p: -p[0].count(".")):
        for pa, pb in pair_outputs(mods_a[module_a], mods_b[module_b]):
            if pa.name is not None and pb.name is not None:
                if (pa.name, pb.name) in seen:
                    continue
                seen.add((pa.name, pb.name))
            va = pa.value.reshape(_squeezed(pa.value.shape))
            vb = pb.value.reshape(_squeezed(pb.value.shape))
            max_abs, rel, cosine, ok = diff_arrays(va, vb, atol, rtol)
            rows.append(
                LayerDiff(
                    module_a,
                    module_b,
                    pa.index,
                    tuple(pa.value.shape),
                    tuple(pb.value.shape),
                    max_abs,
                    rel,
                    cosine,
                    ok,
                    order=pa.order,
                    name_a=pa.name,
                    name_b=pb.name,
                )
            )
    # a graph's parent module ends on its last child's value: the deeper one comes first
    rows.sort(key=lambda r: (r.order, -r.module.count("."), r.index))
    return rows, unpaired_a, unpaired_b


def compare_layers(
    a: str | os.PathLike,
    b: str | os.PathLike,
    *,
    prompt: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    trust_remote_code: bool = False,
    quiet: bool = True,
) -> LayerReport:
    """Run ``a`` (the reference) and ``b`` on the same token ids and compare every
    intermediate they both expose, module by module (module doc).

    Args:
        a, b: anything :class:`keishiki.LLM` runs: a Hugging Face folder, an ONNX causal-LM
            export, a TorchScript LM, a GGUF file (through its dequantized folder).
        prompt: the text, tokenized with A's tokenizer (default ``"The quick brown fox"``).
        atol, rtol: over tolerance when ``max_abs > atol + rtol * max|A|``; defaults
            :data:`DEFAULT_ATOL` and :data:`TOLERANCE` of the looser side's precision.
        trust_remote_code: load models that scan dangerous or unknown (runs their code).
        quiet: no progress bar.

    Returns:
        A :class:`LayerReport`: ``first_divergence``, ``exit_code`` (0 / 1), ``rows``.

    Raises:
        InvalidRequest: a model that cannot run, negative tolerances, tokenizers or
            vocabularies that differ, nothing that pairs.
        UnsafeFile: a model the load gate refuses (without ``trust_remote_code``).
        RuntimeUnavailable, MissingDependency: an engine that cannot run here.
    """
    from ..core.progress import progress
    from .intermediates import capture, resolve
    from .outputs import DEFAULT_PROMPT
    from .weights import check_tolerances

    check_tolerances(atol=atol, rtol=rtol)
    side_a = resolve(a, trust_remote_code)
    side_b = resolve(b, trust_remote_code)
    # an empty prompt is the user's (it was silently replaced by the default): it runs on
    # whatever the tokenizer adds (BOS), or is refused as tokenizing to nothing
    prompt = DEFAULT_PROMPT if prompt is None else prompt
    _check_vocab(side_a, side_b)
    token_ids = tokenize(side_a, side_b, prompt)
    _check_context(side_a, side_b, len(token_ids))
    with progress(2, "running A", quiet=quiet) as advance:
        cap_a = capture(side_a, token_ids)
        advance(1, description="running B")
        cap_b = capture(side_b, token_ids)
        advance(1)
    source = "given" if rtol is not None else f"default for {cap_a.precision} vs {cap_b.precision}"
    rtol = rtol if rtol is not None else default_rtol(cap_a.precision, cap_b.precision)
    atol = atol if atol is not None else DEFAULT_ATOL
    rows, unpaired_a, unpaired_b = diff_captures(cap_a, cap_b, atol, rtol)
    if not rows:
        raise InvalidRequest(
            f"no intermediate of {a} pairs with one of {b} (module paths "
            f"and output shapes differ: not the same architecture?)"
        )
    return LayerReport(
        cap_a, cap_b, prompt, token_ids, atol, rtol, source, rows, unpaired_a, unpaired_b
    )


def tokenize(side_a, side_b, prompt: str) -> list[int]:
    """A's ids for ``prompt``; B's tokenizer, when it has one, must give the same.

    Raises:
        InvalidRequest: A has no tokenizer, or the two tokenize the prompt differently.
    """
    from ..runtimes.tokenizer import Tokenizer

    if side_a.tokenizer_dir is None:
        raise InvalidRequest(
            f"{side_a.path}: no tokenizer.json beside it to tokenize the prompt with"
        )
    ids = Tokenizer(side_a.tokenizer_dir).encode(prompt)
    if not ids:
        raise InvalidRequest(f"the prompt {prompt!r} tokenizes to nothing")
    if side_b.tokenizer_dir is not None:
        ids_b = Tokenizer(side_b.tokenizer_dir).encode(prompt)
        if ids_b != ids:
            raise InvalidRequest(
                f"A and B tokenize {prompt!r} differently ({ids[:8]} vs "
                f"{ids_b[:8]}): not the same model's tokenizer"
            )
    return ids


def _check_vocab(side_a, side_b) -> None:
    """Refuse two different models: vocabulary, width or depth differ in their configs.

    Two architectures sharing a tokenizer (a Llama and a Qwen2 of another width) used to
    pair only their ``lm_head`` and read "diverged" (exit 1): that is not a finding about
    a conversion, so it is refused as vocabularies are (exit 2)."""
    from ..runtimes.base import model_config_value

    for key, what in (
        ("vocab_size", "vocabularies differ"),
        ("hidden_size", "hidden sizes differ"),
        ("num_hidden_layers", "layer counts differ"),
    ):
        va = model_config_value(side_a.config, key)
        vb = model_config_value(side_b.config, key)
        if isinstance(va, int) and isinstance(vb, int) and va != vb:
            raise InvalidRequest(
                f"{what}: A has {va}, B {vb} ({key}); compare layers of one model in two formats"
            )


def _check_context(side_a, side_b, n_tokens: int) -> None:
    """Refuse a prompt longer than either model's context: past it, rotary models run on
    positions they were never trained on and learned position tables index out of range,
    so no layer's difference would mean anything."""
    from ..runtimes.base import model_config_value

    for name, side in (("A", side_a), ("B", side_b)):
        n_ctx = model_config_value(side.config, "max_position_embeddings", "n_positions", "n_ctx")
        if isinstance(n_ctx, int) and 0 < n_ctx < n_tokens:
            raise InvalidRequest(
                f"the prompt is {n_tokens} tokens, longer than {name}'s "
                f"context of {n_ctx} (max_position_embeddings): give a "
                f"shorter prompt"
            )
