"""Is a quantized model still the model?  Its next-token distributions against the original's.

Quantization is lossy by design, so a quantized conversion is not checked for equality but
for what it is for: both models read the same fixed prompts (:data:`N_PROMPTS` prompts of
:data:`PROMPT_LEN` token ids drawn from a fixed seed, so no tokenizer is needed and every
run is the same), and at every position of every prompt we measure

- the logit error: ``max_abs_diff`` and ``mean_abs_diff`` of the raw logits;
- ``kl_mean`` / ``kl_max``: KL(P_original || P_quantized) of the next-token distributions
  (what llama.cpp's ``llama-perplexity --kl-divergence`` reports as "Mean KLD");
- ``top1_agreement``: the share of positions where both pick the same greedy token
  (llama.cpp's "Same top p"), and ``top1_agreement_confident`` over the ``n_confident``
  positions where the original is confident (its greedy token has probability > 1/2: more
  likely than every other token together).  Where it is not, a flip between near-equal
  tokens says nothing: a random or barely trained model's flat distributions flip on noise
  far below any real damage, and KL divergence measures those positions.

The step passes when ``kl_mean <= kl_mean_allowed`` and ``top1_agreement_confident >=
top1_min`` (vacuous without confident positions) of the type's row in :data:`TOLERANCES`
(docs/quantize.md explains the numbers).
The same metrics and table serve ``keishiki compare`` when one side is quantized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

N_PROMPTS = 4
PROMPT_LEN = 16
SEED = 1234
# a position is "confident" when the original's greedy token has more probability than this
CONFIDENT = 0.5

# per --quant (and GGML type): the largest mean KL divergence and the smallest greedy-token
# agreement accepted.  Set ~3x looser than llama.cpp's published KLD / "same top p" for
# Llama-3-8B on wikitext (q8_0 ~0.001 / 99%, q6_K ~0.005 / 97%, q4_K_M ~0.03 / 93%,
# q3_K_M ~0.1 / 88%, q2_K ~0.4 / 80%), since the prompts here are few and random.
TOLERANCES: dict[str, dict[str, float]] = {
    "q8_0": {"kl_mean": 0.005, "top1": 0.95},
    "q6_K": {"kl_mean": 0.02, "top1": 0.92},
    "q5_K_M": {"kl_mean": 0.05, "top1": 0.88},
    "q5_0": {"kl_mean": 0.05, "top1": 0.88},
    "q5_1": {"kl_mean": 0.05, "top1": 0.88},
    "q4_K_M": {"kl_mean": 0.1, "top1": 0.85},
    "q4_K_S": {"kl_mean": 0.1, "top1": 0.85},
    "q4_0": {"kl_mean": 0.15, "top1": 0.82},
    "q4_1": {"kl_mean": 0.15, "top1": 0.82},
    "q3_K_M": {"kl_mean": 0.3, "top1": 0.75},
    "q2_K": {"kl_mean": 1.0, "top1": 0.6},
    "int8": {"kl_mean": 0.05, "top1": 0.88},
    "int4": {"kl_mean": 0.15, "top1": 0.8},
}
# a GGML type's own row (compare sees tensor types, not the mix that chose them)
TYPE_TOLERANCE = {
    "Q8_0": "q8_0",
    "Q6_K": "q6_K",
    "Q5_K": "q5_K_M",
    "Q5_0": "q5_0",
    "Q5_1": "q5_1",
    "Q4_K": "q4_K_M",
    "Q4_0": "q4_0",
    "Q4_1": "q4_1",
    "Q3_K": "q3_K_M",
    "Q2_K": "q2_K",
}


def tolerance(quant: str) -> dict[str, float]:
    """The tolerance row of a --quant value or GGML type (aliases resolved)."""
    from .gguf_quant import resolve

    key = TYPE_TOLERANCE.get(quant, resolve(quant))
    return TOLERANCES[key]


def prompts(vocab: int) -> list[np.ndarray]:
    """The fixed prompts: ``[1, PROMPT_LEN]`` int64 token ids each, the same on every run."""
    rng = np.random.default_rng(SEED)
    return [rng.integers(0, vocab, size=(1, PROMPT_LEN), dtype=np.int64) for _ in range(N_PROMPTS)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logit_metrics(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> dict[str, Any]:
    """The metrics of the module doc over paired ``[positions, vocab]`` logit arrays."""
    kl, same, n_sure, same_sure, abs_max, abs_sum, n = [], 0, 0, 0, 0.0, 0.0, 0
    for a, b in zip(ref, got):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"logits shapes differ: {a.shape} vs {b.shape}")
        diff = np.abs(a - b)
        abs_max = max(abs_max, float(diff.max()))
        abs_sum += float(diff.sum())
        n += diff.size
        la, lb = _log_softmax(a), _log_softmax(b)
        kl.extend(np.maximum((np.exp(la) * (la - lb)).sum(axis=-1), 0.0).tolist())
        pick_a, pick_b = a.argmax(-1), b.argmax(-1)
        agree = pick_a == pick_b
        same += int(agree.sum())
        confident = np.exp(la.max(axis=-1)) > CONFIDENT
        n_sure += int(confident.sum())
        same_sure += int((agree & confident).sum())
    positions = len(kl)
    return {
        "n_prompts": len(ref),
        "n_positions": positions,
        "max_abs_diff": abs_max,
        "mean_abs_diff": abs_sum / n if n else 0.0,
        "kl_mean": float(np.mean(kl)) if kl else 0.0,
        "kl_max": float(np.max(kl)) if kl else 0.0,
        "top1_agreement": same / positions if positions else 1.0,
        "n_confident": n_sure,
        "top1_agreement_confident": same_sure / n_sure if n_sure else None,
    }


def judge(metrics: dict[str, Any], quant: str) -> dict[str, Any]:
    """``metrics`` with the tolerance of ``quant``, ``passed`` and, when failed, ``reason``."""
    tol = tolerance(quant)
    out = {
        "method": "quantized-vs-original",
        **metrics,
        "quant": quant,
        "kl_mean_allowed": tol["kl_mean"],
        "top1_min": tol["top1"],
    }
    problems = []
    if not metrics["kl_mean"] <= tol["kl_mean"]:
        problems.append(f"mean KL divergence {metrics['kl_mean']:.3g} over {tol['kl_mean']:g}")
    sure = metrics["top1_agreement_confident"]
    if sure is not None and not sure >= tol["top1"]:
        problems.append(
            f"greedy-token agreement {sure:.1%} where the original is confident "
            f"({metrics['n_confident']} positions) under {tol['top1']:.0%}"
        )
    out["passed"] = not problems
    if problems:
        out["reason"] = f"{quant}: " + "; ".join(problems)
    return out


def compare_logits(
    run_ref: Callable[[np.ndarray], np.ndarray],
    run_got: Callable[[np.ndarray], np.ndarray],
    vocab: int,
    quant: str,
) -> dict[str, Any]:
    """Run both on :func:`prompts` (``run(ids) -> [positions, vocab]`` logits) and judge."""
    ids = prompts(vocab)
    return judge(logit_metrics([run_ref(p) for p in ids], [run_got(p) for p in ids]), quant)


# ---- the two kinds of quantized models keishiki writes -----------------------------------


def gguf_quality(hf_src: Path, gguf_path: Path, quant: str) -> dict[str, Any]:
    """The HF model at ``hf_src`` against the same model with the GGUF's tensors
    dequantized by gguf-py (names mapped back, Q/K un-permuted), both run by transformers.

    One copy of the model in float32 is in memory: the original runs first, then its
    parameters are overwritten tensor by tensor with the dequantized ones and it runs again.
    """
    import torch

    from .gguf_edges import gguf_tensors
    from .onnx_export import load_causal_lm

    model = load_causal_lm(Path(hf_src), "float32")
    vocab = int(model.config.vocab_size)
    ids = prompts(vocab)

    def run() -> list[np.ndarray]:
        with torch.no_grad():
            return [model(input_ids=torch.from_numpy(p)).logits[0].float().numpy() for p in ids]

    ref = run()
    own = model.state_dict()
    st, _ = gguf_tensors(Path(gguf_path), None)
    names = {t.info.name for t in st.tensors}
    unknown = sorted(names - set(own))
    if unknown:
        return {
            "method": "quantized-vs-original",
            "passed": False,
            "quant": quant,
            "reason": f"{len(unknown)} GGUF tensor(s) not in the model, e.g. {unknown[0]}",
        }
    with torch.no_grad():
        for t in st.tensors:
            own[t.info.name].copy_(torch.from_numpy(np.array(t.load(), dtype=np.float32)))
        if (
            "lm_head.weight" in own
            and "lm_head.weight" not in names
            and "model.embed_tokens.weight" in names
        ):
            # the GGUF ties them (llama.cpp reads token_embd as the output)
            own["lm_head.weight"].copy_(own["model.embed_tokens.weight"])
    return judge(logit_metrics(ref, run()), quant)


def onnx_logits(session) -> Callable[[np.ndarray], np.ndarray]:
    """``ids -> [positions, vocab]`` logits of a KV-cache causal-LM session (empty past)."""
    from .run_verify import onnx_lm_shape

    inputs = {i.name: i for i in session.get_inputs()}
    shape = onnx_lm_shape(session)

    def step(ids: np.ndarray) -> np.ndarray:
        n = ids.shape[1]
        feed: dict[str, np.ndarray] = {"input_ids": ids}
        if "attention_mask" in inputs:
            feed["attention_mask"] = np.ones((1, n), dtype=np.int64)
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(n, dtype=np.int64)[None, :]
        for name, spec in inputs.items():
            if name.startswith("past_key_values."):
                dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
                feed[name] = np.zeros((1, shape["kv_heads"], 0, shape["head_dim"]), dtype)
        return np.asarray(session.run(["logits"], feed)[0][0], dtype=np.float32)

    return step


def onnx_quality(ref_model: Path, quant_model: Path, quant: str) -> dict[str, Any]:
    """The original ONNX graph against its quantized copy, both in ONNX Runtime."""
    from .._optional import require
    from .run_verify import onnx_lm_shape

    ort = require("onnxruntime", extra="onnx", purpose="verify the quantized model")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ref = ort.InferenceSession(str(ref_model), options, providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(quant_model), options, providers=["CPUExecutionProvider"])
    vocab = onnx_lm_shape(ref)["vocab"]
    return compare_logits(onnx_logits(ref), onnx_logits(got), vocab, quant)


# ---- recognising a quantized model (keishiki compare) ------------------------------------

# GGML types from the fewest bits to the most: a mix is judged by its lowest
_PRECISION = ("Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")


def quant_kind(model) -> str | None:
    """The tolerance key of an inspected model (:class:`keishiki.core.model.ModelInfo`)
    that holds quantized weights: a GGUF's lowest-precision GGML type (``"Q4_K"``), or an
    ONNX graph quantized by onnxruntime (``"int4"``: MatMulNBits ``*_Q4`` weights;
    ``"int8"``: quantize_dynamic's ``*_quantized`` weights); None when not quantized."""
    found = set()
    for t in model.tensors:
        ggml = str((t.extra or {}).get("ggml_type") or "").upper()
        if ggml in _PRECISION:
            found.add(ggml)
        elif t.name.endswith("_Q4") and t.dtype == "uint8":
            return "int4"
        elif t.name.endswith("_quantized") and t.dtype in ("int8", "uint8"):
            return "int8"
    return min(found, key=_PRECISION.index) if found else None
