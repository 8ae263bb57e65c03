"""Continuous batching: sequences join and leave a running batch between decode steps.

``LoopBackend.run`` decodes a fixed group until all of it has finished.  A server cannot wait
for that: a request that arrives mid-decode joins at the next step, and a finished or
cancelled one leaves at once (iteration-level scheduling, as in Orca and vLLM's scheduler).
vLLM pages its KV cache into blocks; keishiki's CPU backends keep dense cache tensors, so
each sequence's "slot" is one row of them: a joining group is prefilled on its own, then its
rows are left-padded to the batch's length and stacked in (padding is masked out, and
positions come from the mask, as in ``LoopBackend._run_group``); a leaving row is cut out,
with the leading columns no remaining row uses.  Each sequence keeps its own generator and
sampling settings, so its tokens do not depend on who it was batched with.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import RuntimeUnavailable
from .base import LoopBackend, Sequence, sample_next


class DecodeBatch:
    """The running batch of one :class:`LoopBackend` (drive it from one thread).

    >>> batch = DecodeBatch(llm._engine)
    >>> batch.join(seqs)          # prefill; each gets its first token
    >>> while batch.size:
    ...     batch.step()          # every running sequence gets one more token

    Attributes:
        seqs: the running sequences, one per row.
        capacity: most rows (1 for a model without an attention mask input, which cannot
            take padded rows).
        steps: decode steps run so far; joins: groups that joined a batch already running.
    """

    def __init__(self, backend: LoopBackend, capacity: int | None = None):
        if not isinstance(backend, LoopBackend):
            raise RuntimeUnavailable(
                f"backend {backend.name!r} runs its own scheduler: "
                f"continuous batching here is for torch, onnxruntime "
                f"and torchscript"
            )
        self.backend = backend
        self.capacity = (capacity or backend.max_batch) if backend.batchable else 1
        self.seqs: list[Sequence] = []
        self._mask: np.ndarray | None = None  # [rows, width]: 1 where a row has a token
        self._state = None
        self.steps = 0
        self.joins = 0

    @property
    def size(self) -> int:
        """Rows in the batch."""
        return len(self.seqs)

    @property
    def free(self) -> int:
        """Rows that can still join."""
        return self.capacity - len(self.seqs)

    def join(self, seqs: list[Sequence]) -> None:
        """Prefill ``seqs`` (left-padded together), sample each one's first token and add
        the unfinished ones to the batch.

        Raises:
            InvalidRequest: what ``Backend.check`` refuses (empty prompt, bad token id).
            RuntimeUnavailable: more rows than ``free``.
        """
        self.backend.check(seqs)
        if len(seqs) > self.free:
            raise RuntimeUnavailable(
                f"{len(seqs)} sequences do not fit: {self.free} of {self.capacity} rows are free"
            )
        width = max(len(s.prompt_ids) for s in seqs)
        ids = np.full((len(seqs), width), self.backend.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        now = time.perf_counter()
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq.prompt_ids) :] = seq.prompt_ids
            mask[row, width - len(seq.prompt_ids) :] = 1
            seq.started_at = seq.started_at or now
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        logits, state = self.backend._forward(None, ids, mask, positions)
        for row, seq in enumerate(seqs):
            sample_next(seq, logits[row])
        if self.seqs:
            self.joins += 1
            self._mask, self._state = self._stack(self._mask, self._state, mask, state)
            self.seqs.extend(seqs)
        else:
            self.seqs, self._mask, self._state = list(seqs), mask, state
        self.drop_finished()

    def step(self) -> None:
        """Feed every running sequence its last token and sample the next one (sequences
        finished since the last call leave first)."""
        self.drop_finished()
        if not self.seqs:
            return
        rows = len(self.seqs)
        next_ids = np.asarray([[s.output_ids[-1]] for s in self.seqs], dtype=np.int64)
        self._mask = np.concatenate([self._mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
        positions = self._mask.sum(axis=1, keepdims=True) - 1
        logits, self._state = self.backend._forward(self._state, next_ids, self._mask, positions)
        self.steps += 1
        for row, seq in enumerate(self.seqs):
            sample_next(seq, logits[row])

    def drop_finished(self) -> list[Sequence]:
        """Remove the finished sequences (and cancelled ones: whoever cancels sets their
        ``finish_reason``) with their cache rows; returns them."""
        keep = [row for row, s in enumerate(self.seqs) if not s.finished]
        gone = [s for s in self.seqs if s.finished]
        if not gone:
            return gone
        if not keep:
            self.clear()
            return gone
        mask = self._mask[keep]
        lead = int(np.argmax(mask.any(axis=0)))  # columns only departed rows used
        parts = [_cut(part, keep, lead) for part in self.backend._state_parts(self._state)]
        self._state = self.backend._state_from_parts(parts)
        self._mask = mask[:, lead:]
        self.seqs = [self.seqs[row] for row in keep]
        return gone

    def clear(self) -> None:
        """Forget every row (after a failed step, or at shutdown)."""
        self.seqs, self._mask, self._state = [], None, None

    def _stack(self, mask_a, state_a, mask_b, state_b):
        width = max(mask_a.shape[1], mask_b.shape[1])
        pad_a, pad_b = width - mask_a.shape[1], width - mask_b.shape[1]
        mask = np.concatenate([_pad(mask_a, pad_a), _pad(mask_b, pad_b)], axis=0)
        parts = [
            _cat([_pad(a, pad_a), _pad(b, pad_b)])
            for a, b in zip(self.backend._state_parts(state_a), self.backend._state_parts(state_b))
        ]
        return mask, self.backend._state_from_parts(parts)


def _axis(part) -> int:
    """The length axis of a state part: KV ``[batch, heads, length, dim]`` or ids."""
    return 2 if part.ndim == 4 else 1


def _cut(part, rows: list[int], lead: int):
    """Rows ``rows`` of ``part`` without its first ``lead`` positions (numpy or torch)."""
    index = (
        np.asarray(rows)
        if isinstance(part, np.ndarray)
        else _torch().as_tensor(rows, device=part.device)
    )
    picked = part[index]
    cut = [slice(None)] * picked.ndim
    cut[_axis(picked)] = slice(lead, None)
    return picked[tuple(cut)]


def _pad(part, width: int):
    """``part`` with ``width`` zero positions in front (masked out, so zeros are fine)."""
    if not width:
        return part
    shape = list(part.shape)
    shape[_axis(part)] = width
    if isinstance(part, np.ndarray):
        return np.concatenate([np.zeros(shape, part.dtype), part], axis=_axis(part))
    return _torch().cat([part.new_zeros(shape), part], dim=_axis(part))


def _cat(parts: list):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=0)
    return _torch().cat(parts, dim=0)


def _torch():
    import torch  # already loaded: the state holds torch tensors

    return torch
