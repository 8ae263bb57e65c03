"""What every backend shares: the sequence record, the checks, and the generation loop.

A backend's public :meth:`Backend.run` validates once, then calls ``_run_impl`` (Polygraphy's
``infer``/``infer_impl`` split).  :class:`LoopBackend` is the loop for backends that only turn
token ids into logits (torch, onnxruntime, torchscript): left-padded batches, attention mask,
position ids from the mask, the shared numpy sampler, and the stop rules.  A subclass writes
one method, ``_forward(state, input_ids, attention_mask, position_ids) -> (logits, state)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..errors import InvalidRequest
from .params import SamplingParams
from .sampling import sample_token, top_logprobs


@dataclass
class Sequence:
    """One completion being generated (a prompt with ``n=2`` makes two)."""

    request: int
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    rng: np.random.Generator
    stop_ids: set[int]
    max_new: int
    output_ids: list[int] = field(default_factory=list)
    text: str | None = None  # set by backends that detokenize themselves (vLLM)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, tuple[float, int]]] | None = None  # per output token
    prompt_logprobs: list[dict[int, tuple[float, int]] | None] | None = None  # vLLM fills it
    started_at: float = 0.0
    first_token_at: float | None = None
    last_token_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int) -> None:
        """Append a token and apply the token-level stop rules (EOS, stop ids, length)."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.output_ids.append(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            # vLLM reports the stop token id, and None for the model's own EOS
            self.stop_reason = token if token in self.params.stop_token_ids else None
        elif len(self.output_ids) >= self.max_new:
            self.finish_reason = "length"


class Backend:
    """A generation engine for one loaded model.

    Attributes:
        name: ``torch``, ``onnxruntime``, ``torchscript`` or ``vllm``.
        details: facts worth showing (device, provider, cache or not), merged into
            ``LLM.backend_reason``.
        max_model_len: longest prompt + output the model takes, or None if unknown.
        max_batch: most sequences decoded together; None for an engine that schedules its
            own batches (vLLM, given ``max_num_seqs`` as an engine argument).
        pad_id: the id fed to padded rows; None for an engine that pads for itself (vLLM),
            which ``LLM`` then leaves alone rather than hand it the tokenizer's.
    """

    name = "?"
    # class attributes, not set in __init__: LoopBackend's class defaults must show through
    max_batch: int | None = None
    pad_id: int | None = None

    def __init__(self) -> None:
        self.details: list[str] = []
        self.max_model_len: int | None = None
        self.vocab_size: int | None = None

    def run(self, seqs: list[Sequence]) -> Iterator[list[Sequence]]:
        """Generate every sequence, yielding the batch after each step (the caller may set
        ``finish_reason`` between steps to stop a sequence, e.g. on a stop string).

        Raises:
            InvalidRequest: an empty batch, an empty prompt, or a token id outside the vocabulary.
        """
        self.check(seqs)
        return self._run_impl(seqs)

    def check(self, seqs: list[Sequence]) -> None:
        """The checks :meth:`run` makes before generating (also used by
        :class:`keishiki.runtimes.batch.DecodeBatch`).

        Raises:
            InvalidRequest: an empty batch, an empty prompt, or a token id outside the vocabulary.
        """
        if not seqs:
            raise InvalidRequest("nothing to generate: the prompt list is empty")
        for seq in seqs:
            if not seq.prompt_ids:
                raise InvalidRequest(f"prompt {seq.request} is empty after tokenization")
            bad = [t for t in seq.prompt_ids if t < 0 or (self.vocab_size and t >= self.vocab_size)]
            if bad:
                raise InvalidRequest(
                    f"prompt {seq.request} has token id {bad[0]} "
                    f"outside the model's vocabulary ({self.vocab_size})"
                )

    def _run_impl(self, seqs: list[Sequence]) -> Iterator[list[Sequence]]:
        raise NotImplementedError


class LoopBackend(Backend):
    """The shared decode loop: subclasses supply ``_forward`` only.

    Attributes:
        batchable: False when the model cannot take an attention mask (a traced model of
            ``input_ids`` alone): prompts then run one at a time, since padding would change
            the result.
        max_batch: most sequences decoded together.
        pad_id: the id fed to finished or padded rows (never attended to).
    """

    batchable = True
    max_batch: int = 16
    pad_id: int = 0

    def _forward(
        self,
        state: Any,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
    ) -> tuple[np.ndarray, Any]:
        """Run the model: ``state`` is None for the prompt, else what the previous call
        returned; ``input_ids``/``position_ids`` are the new tokens ``[batch, new]`` and
        ``attention_mask`` covers all tokens so far ``[batch, total]``.  Returns the last
        position's logits ``[batch, vocab]`` and the new state."""
        raise NotImplementedError

    def _state_parts(self, state: Any) -> list:
        """``state`` as a flat list of arrays (numpy or torch) whose first axis is the batch
        row and whose length axis is 2 for ``[batch, heads, length, head_dim]`` KV tensors or
        1 for ``[batch, length]`` token ids; what lets
        :class:`~keishiki.runtimes.batch.DecodeBatch` drop rows and stack new ones in."""
        raise NotImplementedError

    def _state_from_parts(self, parts: list) -> Any:
        """The inverse of :meth:`_state_parts`."""
        raise NotImplementedError

    def next_token_logits(self, token_ids: list[int]) -> np.ndarray:
        """Teacher-forced logits: row ``i`` is the model's next-token logits after
        ``token_ids[:i + 1]``, shape ``[len(token_ids), vocab]`` (float32).  A model that can
        return every position's logits in one call is run once (torch; ONNX and TorchScript
        graphs without a cache); a cached graph, which only returns the last position, is
        fed one token at a time through its cache, the way decoding sees it.

        Raises:
            InvalidRequest: empty ``token_ids``, an id outside the vocabulary, or more ids
                than the model's context (``max_model_len``).
        """
        if not token_ids:
            raise InvalidRequest("no token ids to score")
        if self.max_model_len and len(token_ids) > self.max_model_len:
            # past its context a model's numbers mean nothing (and learned position tables
            # fail with an index error): generate() refuses such prompts too
            raise InvalidRequest(
                f"{len(token_ids)} token ids to score; the model takes at most {self.max_model_len}"
            )
        bad = [t for t in token_ids if t < 0 or (self.vocab_size and t >= self.vocab_size)]
        if bad:
            raise InvalidRequest(
                f"token id {bad[0]} is outside the model's vocabulary ({self.vocab_size})"
            )
        return self._score(token_ids)

    def _score(self, token_ids: list[int]) -> np.ndarray:
        """next_token_logits' work, on checked ids (a backend whose model returns every
        position's logits in one call overrides this)."""
        ids = np.asarray([token_ids], dtype=np.int64)
        logits, state = self._forward(
            None, ids[:, :1], np.ones((1, 1), np.int64), np.zeros((1, 1), np.int64)
        )
        rows = [np.asarray(logits, dtype=np.float32)[0].copy()]
        for i in range(1, ids.shape[1]):
            mask = np.ones((1, i + 1), dtype=np.int64)
            logits, state = self._forward(
                state, ids[:, i : i + 1], mask, np.array([[i]], dtype=np.int64)
            )
            rows.append(np.asarray(logits, dtype=np.float32)[0].copy())
        return np.stack(rows)

    def _run_impl(self, seqs: list[Sequence]) -> Iterator[list[Sequence]]:
        size = self.max_batch if self.batchable else 1
        for start in range(0, len(seqs), size):
            yield from self._run_group(seqs[start : start + size])

    def _run_group(self, group: list[Sequence]) -> Iterator[list[Sequence]]:
        width = max(len(s.prompt_ids) for s in group)
        input_ids = np.full((len(group), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(group), width), dtype=np.int64)
        for row, seq in enumerate(group):  # left padding: every row's last token is at -1
            input_ids[row, width - len(seq.prompt_ids) :] = seq.prompt_ids
            mask[row, width - len(seq.prompt_ids) :] = 1
            seq.started_at = time.perf_counter()
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        logits, state = self._forward(None, input_ids, mask, positions)
        while True:
            next_ids = np.full((len(group), 1), self.pad_id, dtype=np.int64)
            for row, seq in enumerate(group):
                if not seq.finished:
                    next_ids[row, 0] = sample_next(seq, logits[row])
            yield group
            if all(seq.finished for seq in group):
                return
            mask = np.concatenate([mask, np.ones((len(group), 1), dtype=np.int64)], axis=1)
            positions = mask.sum(axis=1, keepdims=True) - 1
            logits, state = self._forward(state, next_ids, mask, positions)


def sample_next(seq: Sequence, logits: np.ndarray) -> int:
    """Draw ``seq``'s next token from its row of ``logits``, record its log-probabilities if
    asked, and append it (applying the stop rules); returns the token."""
    token = sample_token(logits, seq.params, seq.rng, seq.prompt_ids, seq.output_ids)
    if seq.params.logprobs is not None:
        if seq.logprobs is None:
            seq.logprobs = []
        seq.logprobs.append(top_logprobs(logits, token, seq.params.logprobs))
    seq.add(token)
    return token


def model_config_value(config: dict, *names: str) -> Any:
    """The first of ``names`` set in a HF ``config.json`` dict (or its ``text_config``)."""
    for source in (config, config.get("text_config") or {}):
        for name in names:
            if source.get(name) is not None:
                return source[name]
    return None
