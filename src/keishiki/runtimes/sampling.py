"""The one token sampler (numpy) shared by the torch, onnxruntime and torchscript backends.

Backends only turn token ids into logits; picking the next token happens here, so the same
seed gives the same tokens whichever backend computed the logits (their logits agree to
~1e-5, far below what moves a draw).  The order of operations is vLLM's: penalties →
temperature → top-k → top-p → min-p → draw.  A draw is an inverse-CDF lookup of one uniform
number over the kept probabilities in token-id order, so it depends only on the
probabilities and on the generator's state.
"""

from __future__ import annotations

import numpy as np

from .params import SamplingParams


def make_rng(
    seed: int | None, index: int = 0, fallback: np.random.Generator | None = None
) -> np.random.Generator:
    """The random generator of completion ``index`` of a request with ``seed``.

    Each completion gets its own stream (seeded by ``(seed, index)``), so results do not depend
    on how requests were batched together.  Without a seed, a stream is spawned from
    ``fallback`` (the LLM-wide generator) or from fresh entropy.
    """
    if seed is not None:
        # numpy seeds only from non-negative integers; vLLM takes any int (-1 included):
        # fold the seed into 64 bits so every int is a distinct, valid seed
        return np.random.default_rng([seed % 2**64, index])
    if fallback is not None:
        return np.random.default_rng(fallback.integers(0, 2**63))
    return np.random.default_rng()


def apply_penalties(
    logits: np.ndarray, params: SamplingParams, prompt_ids: list[int], output_ids: list[int]
) -> np.ndarray:
    """Repetition penalty (prompt + output tokens, as in vLLM and HF: positive logits are
    divided, negative ones multiplied) then presence/frequency penalties (output tokens)."""
    if params.repetition_penalty != 1.0:
        seen = np.unique(np.asarray(prompt_ids + output_ids, dtype=np.int64))
        seen = seen[seen < logits.shape[-1]]
        values = logits[seen]
        logits[seen] = np.where(
            values > 0, values / params.repetition_penalty, values * params.repetition_penalty
        )
    if (params.presence_penalty or params.frequency_penalty) and output_ids:
        counts = np.bincount(np.asarray(output_ids), minlength=logits.shape[-1])[: logits.shape[-1]]
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return logits


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Softmax of ``logits / temperature`` with top-k, top-p and min-p applied (zeros for the
    dropped tokens, the rest renormalised)."""
    scaled = logits / params.temperature
    vocab = scaled.shape[-1]
    if 0 < params.top_k < vocab:
        # the k-th largest value is the threshold; ties at it are kept (as in vLLM)
        kth = np.partition(scaled, vocab - params.top_k)[vocab - params.top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    probs = np.exp(scaled - np.max(scaled))
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        # keep a token while the mass of the tokens before it is still below top_p
        keep_sorted = (np.cumsum(sorted_probs) - sorted_probs) < params.top_p
        keep = np.zeros_like(keep_sorted)
        keep[order] = keep_sorted
        probs = np.where(keep, probs, 0.0)
    if params.min_p > 0.0:
        probs = np.where(probs >= params.min_p * probs.max(), probs, 0.0)
    return probs / probs.sum()


def sample_token(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
    prompt_ids: list[int],
    output_ids: list[int],
) -> int:
    """The next token for one sequence.

    Args:
        logits: the last position's logits, shape ``[vocab]`` (any float dtype).
        params: validated sampling settings.
        rng: this sequence's generator (advanced by one draw unless greedy).
        prompt_ids, output_ids: the sequence so far (for the penalties).

    Returns:
        The chosen token id.
    """
    needs_penalty = (
        params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
    )
    if params.greedy and not needs_penalty:
        return int(np.argmax(logits))
    work = np.array(logits, dtype=np.float64)
    if needs_penalty:
        work = apply_penalties(work, params, prompt_ids, output_ids)
    if params.greedy:
        return int(np.argmax(work))
    probs = probabilities(work, params)
    cdf = np.cumsum(probs)
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(index, len(probs) - 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log(softmax(logits))`` over the last axis, in float64 (stable for large logits)."""
    work = np.asarray(logits, dtype=np.float64)
    shifted = work - np.max(work, axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_logprobs(logits: np.ndarray, token: int, k: int) -> dict[int, tuple[float, int]]:
    """``{token_id: (logprob, rank)}`` for the ``k`` most likely tokens and ``token`` (rank 1
    is the most likely; equal values share the better rank), from the raw ``logits`` of one
    position, as vLLM's ``raw_logprobs`` mode reports them."""
    logp = log_softmax(logits)
    chosen = float(logp[token])
    out = {int(token): (chosen, int(np.count_nonzero(logp > chosen)) + 1)}
    if k > 0:
        k = min(k, logp.shape[-1])
        best = np.argpartition(-logp, k - 1)[:k]
        for rank, tid in enumerate(best[np.argsort(-logp[best], kind="stable")], start=1):
            out.setdefault(int(tid), (float(logp[tid]), rank))
    return out
