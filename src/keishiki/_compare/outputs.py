"""Run two causal LMs on the same prompt and compare their greedy tokens and logits.

Both models load through :class:`keishiki.LLM` (any runnable format: HF folder, ONNX,
TorchScript).  The prompt is tokenized once, with A's tokenizer, and both get the same ids.

1. Tokens: greedy generation (temperature 0, EOS ignored) of ``max_tokens`` on each side;
   ``first_divergence`` is the first step where they differ.
2. Logits: both are fed A's tokens (teacher forcing) through the engine's forward step, so a
   single early divergence does not hide how close the rest is; ``max_abs_diff`` is over
   every step's last-position logits and ``max_rel_diff = max_abs_diff / max|logits_A|``.
   This uses :meth:`keishiki.LLM.next_token_logits`; engines without it (vLLM) compare
   tokens only.

Passed: tokens equal and ``max_abs_diff <= atol + rtol * max|logits_A|`` where atol defaults
to the converter's run-both tolerance for the weights' dtype (1e-4 for float32).  When one
side is quantized (a GGUF k-quant or q8_0, an int8/int4 ONNX) and no atol is given, the
verdict is the quantized conversion's instead (``quantized``: KL divergence and greedy
agreement within the type's tolerance, :mod:`keishiki._convert.quant_verify`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.model import ModelInfo
from ..errors import InvalidRequest

DEFAULT_PROMPT = "The quick brown fox"


def _default_atol(dtype: str | None) -> float:
    try:
        from .._convert.run_verify import default_atol
    except ImportError:  # converter not installed in this tree
        return 1e-4
    return default_atol(dtype)


def _weights_dtype(model: ModelInfo) -> str:
    floats = [d for d in model.dtypes if d.startswith(("float", "bfloat"))]
    return floats[0] if floats else "float32"


def check_runnable(model: ModelInfo, trust_remote_code: bool = False) -> None:
    """Fail fast, before a long weight comparison, when ``model`` cannot generate or may not
    be loaded (the load gate, :func:`keishiki.core.gate.admit`).

    Raises:
        InvalidRequest: not a causal LM in a format :class:`keishiki.LLM` runs.
        UnsafeFile: it scans dangerous or unknown, without ``trust_remote_code``.
    """
    from ..core.gate import admit
    from ..runtimes.select import choose

    try:
        choice = choose(model.path)
    except InvalidRequest as exc:
        raise InvalidRequest(f"cannot compare outputs: {exc}") from None
    admit(choice.model_file, trust=trust_remote_code, purpose="compare outputs")


def _load(model: ModelInfo, trust_remote_code: bool):
    from ..runtimes import LLM

    try:
        return LLM(model=model.path, trust_remote_code=trust_remote_code)
    except InvalidRequest as exc:
        raise InvalidRequest(f"cannot compare outputs: {exc}") from None


def _teacher_forced(llm, prompt_ids: list[int], tokens: list[int]) -> np.ndarray | None:
    """Last-position logits after the prompt and after each of ``tokens`` but the last
    (``[len(tokens), vocab]``), or None for an engine that does not expose logits (vLLM)."""
    from ..errors import RuntimeUnavailable

    try:
        rows = llm.next_token_logits(prompt_ids + tokens[:-1])
    except RuntimeUnavailable:
        return None
    return rows[len(prompt_ids) - 1 :]


def compare_outputs(
    a: ModelInfo,
    b: ModelInfo,
    prompt: str | None = None,
    max_tokens: int = 20,
    atol: float | None = None,
    rtol: float = 0.0,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Greedy-decode ``a`` and ``b`` on one prompt; compare tokens and logits (module doc).

    Args:
        a, b: inspected models whose paths :class:`keishiki.LLM` can load.
        prompt: the text (default: :data:`DEFAULT_PROMPT`).
        max_tokens: greedy steps.
        atol, rtol: logit tolerance (atol None or 0: the default for A's weight dtype, since
            two runtimes never give bit-equal logits).
        trust_remote_code: load models that scan dangerous or unknown (runs their code).

    Returns:
        ``{"passed", "summary", "prompt", "prompt_token_ids", "tokens_a", "tokens_b",
        "tokens_match", "first_divergence", "max_abs_diff", "max_rel_diff", "atol", "rtol",
        "backend_a", "backend_b", "text_a", "text_b"}``.

    Raises:
        InvalidRequest: a model cannot generate (not a causal LM in a runnable format).
        RuntimeUnavailable, MissingDependency: the engine cannot run here.
    """
    from ..runtimes import SamplingParams

    if max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, got {max_tokens}")
    prompt = prompt or DEFAULT_PROMPT
    llm_a, llm_b = _load(a, trust_remote_code), _load(b, trust_remote_code)
    prompt_ids = llm_a.tokenizer.encode(prompt)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    request = {"prompt": prompt, "prompt_token_ids": prompt_ids}
    out_a = llm_a.generate([request], params)[0].outputs[0]
    out_b = llm_b.generate([request], params)[0].outputs[0]
    tokens_a, tokens_b = list(out_a.token_ids), list(out_b.token_ids)
    first = next(
        (i for i, (x, y) in enumerate(zip(tokens_a, tokens_b)) if x != y),
        None if len(tokens_a) == len(tokens_b) else min(len(tokens_a), len(tokens_b)),
    )

    atol_given = bool(atol)
    atol = atol if atol else _default_atol(_weights_dtype(a))
    max_abs = max_rel = None
    logits_ok = True
    steps_a = _teacher_forced(llm_a, prompt_ids, tokens_a)
    steps_b = _teacher_forced(llm_b, prompt_ids, tokens_a) if steps_a is not None else None
    if steps_a is not None and steps_b is not None:
        if any(x.shape != y.shape for x, y in zip(steps_a, steps_b)):
            raise InvalidRequest(
                f"logits shapes differ: {steps_a[0].shape} vs "
                f"{steps_b[0].shape} (different vocabularies?)"
            )
        max_abs = max(
            float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(steps_a, steps_b)
        )
        ref = max(float(np.max(np.abs(x))) for x in steps_a)
        max_rel = max_abs / ref if ref else 0.0
        logits_ok = max_abs <= atol + rtol * ref
    tokens_match = first is None
    passed = bool(tokens_match and logits_ok)
    summary = f"tokens {'match' if tokens_match else f'diverge at step {first}'}" + (
        f", max logit diff {max_abs:.3g} (atol {atol:g})"
        if max_abs is not None
        else ", logits not compared"
    )
    quantized = _quantized_judgement(a, b, steps_a, steps_b) if not atol_given else None
    if quantized is not None:  # a quantized side: judged by KL and greedy agreement
        passed = quantized["passed"]
        summary += (
            f"; quantized ({quantized['quant']}): KL mean {quantized['kl_mean']:.3g} "
            f"(<= {quantized['kl_mean_allowed']:g}), greedy agreement "
            f"{quantized['top1_agreement']:.0%}"
        )
    return {
        "passed": passed,
        "summary": summary,
        "prompt": prompt,
        "prompt_token_ids": prompt_ids,
        "steps": max_tokens,
        "tokens_a": tokens_a,
        "tokens_b": tokens_b,
        "tokens_match": tokens_match,
        "first_divergence": first,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "atol": atol,
        "rtol": rtol,
        "backend_a": llm_a.backend,
        "backend_b": llm_b.backend,
        "text_a": out_a.text,
        "text_b": out_b.text,
        "quantized": quantized,
    }


def _quantized_judgement(a: ModelInfo, b: ModelInfo, steps_a, steps_b) -> dict | None:
    """When one side holds quantized weights (a k-quant GGUF, an int8/int4 ONNX) and no
    atol was given: the teacher-forced logits judged as the converter judges a quantized
    conversion (:mod:`keishiki._convert.quant_verify`: KL divergence and greedy agreement
    within the type's tolerance), since tokens and logits are not expected to be equal."""
    if steps_a is None or steps_b is None:
        return None
    try:
        from .._convert.quant_verify import judge, logit_metrics, quant_kind
    except ImportError:  # converter not installed in this tree
        return None
    kind = quant_kind(b) or quant_kind(a)
    if kind is None:
        return None
    return judge(logit_metrics([np.asarray(steps_a)], [np.asarray(steps_b)]), kind)
