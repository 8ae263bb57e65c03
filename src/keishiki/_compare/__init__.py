"""Compare a model across formats: its weights tensor by tensor, and optionally its outputs;
or, with :func:`compare_layers`, its intermediate outputs module by module.

>>> report = keishiki.compare("tiny-llama/", "tiny-llama-onnx/model.onnx", atol=1e-6)
>>> report.verdict, report.exit_code
('identical', 0)

Tensors are paired by :func:`keishiki.mapping.map_names` (names, prefixes, GGUF names, then
content hashes for exporter-generated ONNX names), then each pair is loaded, compared and
dropped before the next: one pair in memory at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.display import MAX_ROWS, Raw, Shown, View, short_repr
from ..core.model import ModelInfo
from ..errors import InvalidRequest
from ..mapping import NameMap, TensorPair, load_array, map_names
from ..mapping.pairs import layouts_differ
from .weights import TensorDiff, check_tolerances, compare_arrays

if TYPE_CHECKING:
    from .layers import LayerReport

PathLike = str | os.PathLike[str]

VERDICTS = ("identical", "within tolerance", "different")


@dataclass
class CompareReport(Shown):
    """What :func:`compare` found.

    Attributes:
        verdict: ``identical`` (every pair bit-for-bit; nothing unpaired except ONNX graph
            constants and computed buffers), ``within tolerance`` (every pair within
            atol/rtol, dtype changes allowed), or ``different`` (see ``reasons``).
        mapping: the :class:`~keishiki.mapping.NameMap` used.
        tensors: one :class:`~keishiki._compare.weights.TensorDiff` per pair, in A's order.
        outputs: the run-both result when outputs were compared, else None.
        config_diff: differing config.json keys when both sides have one (informational).
    """

    mapping: NameMap
    tensors: list[TensorDiff]
    atol: float
    rtol: float
    allow_unmatched: bool = False
    outputs: dict[str, Any] | None = None
    config_diff: dict[str, Any] | None = None

    @property
    def verdict(self) -> str:
        if self.reasons:
            return "different"
        ua, ub = self.mapping.counted_unmatched  # graph constants, computed buffers never count
        if all(d.status == "identical" for d in self.tensors) and not (ua or ub):
            return "identical"
        return "within tolerance"

    @property
    def exit_code(self) -> int:
        """0 when identical or within tolerance, 1 when different (the CLI's exit code)."""
        return 0 if self.verdict != "different" else 1

    @property
    def reasons(self) -> list[str]:
        """Why the verdict is ``different`` (empty otherwise), most important first."""
        reasons = []
        bad = [d for d in self.tensors if not d.ok]
        if bad:
            names = ", ".join(d.pair.a for d in bad[:5]) + (" …" if len(bad) > 5 else "")
            reasons.append(f"{len(bad)} tensor(s) differ: {names}")
        ua, ub = self.mapping.counted_unmatched
        if not self.allow_unmatched and (ua or ub):
            reasons.append(
                f"unpaired tensors: {len(ua)} only in A{_first(ua)}, "
                f"{len(ub)} only in B{_first(ub)}"
            )
        if not self.tensors and (self.mapping.unmatched_a or self.mapping.unmatched_b):
            # (two models without any tensor have nothing that differs)
            reasons.append("no tensor of A could be paired with one of B")
        if self.outputs is not None and not self.outputs.get("passed", False):
            reasons.append("outputs differ: " + str(self.outputs.get("summary", "")))
        return reasons

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.tensors:
            out[d.status] = out.get(d.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        verdict = self.verdict
        mapping = self.mapping.to_dict()
        return {
            "verdict": verdict,
            "exit_code": self.exit_code,
            "reasons": self.reasons,
            "a": mapping["a"],
            "b": mapping["b"],
            "atol": self.atol,
            "rtol": self.rtol,
            "n_pairs": len(self.tensors),
            "status_counts": self.counts(),
            "how": mapping["how"],
            "max_abs_diff": self.max_abs_diff,
            "tensors": [d.to_dict() for d in self.tensors],
            "unmatched_a": mapping["unmatched_a"],
            "unmatched_b": mapping["unmatched_b"],
            "outputs": self.outputs,
            "config_diff": self.config_diff,
        }

    @property
    def max_abs_diff(self) -> float:
        """The largest absolute difference over the pairs (0.0 when there are none)."""
        return max((d.max_abs_diff or 0.0 for d in self.tensors), default=0.0)

    def __repr__(self) -> str:
        return short_repr(
            "CompareReport",
            [
                ("verdict", self.verdict),
                ("pairs", len(self.tensors)),
                ("max_abs_diff", Raw(f"{self.max_abs_diff:.3g}")),
                ("a", self.mapping.a_path),
                ("b", self.mapping.b_path),
            ],
        )

    def _view(self) -> View:
        ua, ub = self.mapping.counted_unmatched
        fields = [
            ("verdict", self.verdict),
            ("A", f"{self.mapping.a_path} ({self.mapping.a_format})"),
            ("B", f"{self.mapping.b_path} ({self.mapping.b_format})"),
            ("tolerance", f"atol {self.atol:g}, rtol {self.rtol:g}"),
            ("pairs", ", ".join(f"{n} {s}" for s, n in self.counts().items()) or "0"),
            ("max abs diff", f"{self.max_abs_diff:.3g}"),
        ]
        if ua or ub:
            fields.append(("unpaired", f"{len(ua)} only in A, {len(ub)} only in B"))
        fields += [("reason", r) for r in self.reasons]
        # the pairs that differ first: they are what a reader looks for
        ranked = sorted(self.tensors, key=lambda d: (d.ok, d.status == "identical"))
        rows = [
            (
                d.pair.a,
                d.pair.b,
                d.pair.how,
                d.status,
                "" if d.max_abs_diff is None else f"{d.max_abs_diff:.3g}",
            )
            for d in ranked[:MAX_ROWS]
        ]
        columns = ("A", "B", "paired by", "status", "max abs diff") if rows else ()
        return View("CompareReport", fields, columns, rows, len(self.tensors))


FOLD_RTOL = 1e-5  # float32 rounding of a BatchNorm fold (a few ulps), not a loose match


def config_diff(a: ModelInfo, b: ModelInfo) -> dict[str, Any] | None:
    """``{key: [value in A, value in B]}`` for config.json keys that differ, when both models
    carry a config (informational: the verdict is about weights and outputs)."""
    if not a.config or not b.config:
        return None
    keys = sorted(set(a.config) | set(b.config))
    return {
        k: [a.config.get(k), b.config.get(k)]
        for k in keys
        if not _same_value(a.config.get(k), b.config.get(k))
    }


def _same_value(x: Any, y: Any) -> bool:
    """``x == y`` for JSON values, except that NaN equals NaN (json reads ``NaN``; a folder
    compared with itself has no differing key)."""
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return True
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same_value(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same_value(u, v) for u, v in zip(x, y))
    return bool(x == y)


def _first(names: list[str], n: int = 3) -> str:
    if not names:
        return ""
    return " (" + ", ".join(names[:n]) + (" …" if len(names) > n else "") + ")"


def _model(x: PathLike | ModelInfo) -> ModelInfo:
    if isinstance(x, ModelInfo):
        return x
    from ..inspecting import inspect

    return inspect(x)


def compare(
    a: PathLike | ModelInfo,
    b: PathLike | ModelInfo,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    by_value: bool = True,
    allow_unmatched: bool = False,
    outputs: bool = False,
    prompt: str | None = None,
    max_tokens: int = 20,
    logits_atol: float | None = None,
    quiet: bool = True,
    trust_remote_code: bool = False,
) -> CompareReport:
    """Compare model ``a`` (the reference) with model ``b``, in any two formats.

    Args:
        a, b: paths (or ModelInfo from :func:`keishiki.inspect`).
        atol, rtol: per-element tolerance ``|a-b| <= atol + rtol*|a|`` (default: exact).
        by_value: pair tensors that names cannot pair by hashing their contents.
        allow_unmatched: tensors present on one side only do not make the verdict
            ``different`` (ONNX graph constants such as shapes never do).
        outputs: also run both as causal LMs with greedy decoding and compare logits and
            tokens (see :mod:`keishiki._compare.outputs`).
        prompt, max_tokens: the prompt (default ``"The quick brown fox"``) and greedy steps.
        logits_atol: absolute logit tolerance for ``outputs`` (default: by weight dtype,
            1e-4 for float32).
        quiet: no progress bar.
        trust_remote_code: with ``outputs``, run models that scan dangerous or unknown.

    Returns:
        A :class:`CompareReport`; ``report.verdict`` and ``report.exit_code`` summarise it.

    Raises:
        UnknownFormat, CorruptFile: a path is not a readable model.
        InvalidRequest: negative tolerances, or a format keishiki cannot read data from.
        UnsafeFile: ``outputs`` on a model that scans dangerous or unknown, untrusted.
    """
    check_tolerances(atol=atol, rtol=rtol, logits_atol=logits_atol)
    model_a, model_b = _model(a), _model(b)
    for m in (model_a, model_b):
        if m.tensor_loader is None and m.tensors:
            raise InvalidRequest(
                f"{m.path}: keishiki cannot read tensor data from {m.format} "
                f"files, so their weights cannot be compared"
            )
    if outputs:
        from .outputs import check_runnable

        check_runnable(model_a, trust_remote_code)
        check_runnable(model_b, trust_remote_code)
    from ..core.progress import progress

    with progress(None, "pairing tensors", quiet=quiet) as advance:
        name_map = map_names(
            model_a,
            model_b,
            by_value=by_value,
            on_load=lambda n: advance(1, description=f"hashing {n}"),
        )
    diffs = []
    in_out = layouts_differ(model_a.format, model_b.format)
    with progress(len(name_map.pairs), "comparing", quiet=quiet) as advance:
        for pair in name_map.pairs:
            if pair.how == "folded":
                diffs.append(_compare_folded(model_a, model_b, pair, atol, rtol, in_out))
            else:
                arr_a = load_array(model_a, model_a.tensor(pair.a))
                arr_b = load_array(model_b, model_b.tensor(pair.b))
                diffs.append(compare_arrays(pair, arr_a, arr_b, atol, rtol, in_out))
                del arr_a, arr_b  # one pair in memory at a time
            advance(1)
    report = CompareReport(
        name_map, diffs, atol, rtol, allow_unmatched, config_diff=config_diff(model_a, model_b)
    )
    if outputs:
        from .outputs import compare_outputs

        report.outputs = compare_outputs(
            model_a,
            model_b,
            prompt=prompt,
            max_tokens=max_tokens,
            atol=logits_atol,
            trust_remote_code=trust_remote_code,
        )
    return report


def _compare_folded(
    model_a: ModelInfo,
    model_b: ModelInfo,
    pair: TensorPair,
    atol: float,
    rtol: float,
    in_out: bool,
) -> TensorDiff:
    """The export's tensor against the checkpoint's layer with its BatchNorm folded in,
    recomputed in float64 from the side holding the BatchNorm (A, or B when
    ``fold["side"] == "B"``).  The exporter folded in float32, so equal is never
    bit-equal: the tolerance is at least :data:`FOLD_RTOL`, and the diff says so."""
    from ..mapping.folding import fold_values

    fold = pair.extra["fold"]
    side_b = fold.get("side") == "B"
    checkpoint, export = (model_b, model_a) if side_b else (model_a, model_b)
    expected = fold_values(lambda n: load_array(checkpoint, checkpoint.tensor(n)), fold)
    got = load_array(export, export.tensor(pair.a if side_b else pair.b))
    a, b = (got, expected) if side_b else (expected, got)
    diff = compare_arrays(pair, a, b, atol, max(rtol, FOLD_RTOL), in_out)
    diff.notes.append(
        f"{'B' if side_b else 'A'}'s {fold['role']} with BatchNorm "
        f"{fold['batchnorm']!r} folded in (eps {fold['eps']:g}); compared with "
        f"rtol >= {FOLD_RTOL:g}"
    )
    return diff


def compare_layers(
    a: PathLike,
    b: PathLike,
    *,
    prompt: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    trust_remote_code: bool = False,
    quiet: bool = True,
) -> LayerReport:
    """Run ``a`` and ``b`` on one prompt with every intermediate exposed and find the first
    module whose output differs (see :func:`keishiki._compare.layers.compare_layers`)."""
    from .layers import compare_layers as run

    return run(
        a,
        b,
        prompt=prompt,
        atol=atol,
        rtol=rtol,
        trust_remote_code=trust_remote_code,
        quiet=quiet,
    )


__all__ = ["CompareReport", "TensorDiff", "compare", "compare_layers"]
