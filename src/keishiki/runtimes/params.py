"""``SamplingParams``: how to pick tokens, with vLLM's names, defaults and checks."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import InvalidRequest

_GREEDY_EPS = 1e-5  # vLLM treats temperature below this as greedy
# most sequences one request may ask for (each holds a KV cache: n=10**6 is a memory bomb);
# vLLM's OpenAI server bounds n by its scheduler's max_num_seqs (256 by default)
MAX_N = 256


MAX_STOP = 64  # stop strings a request may give
MAX_STOP_CHARS = 1024  # characters in one stop string


@dataclass
class SamplingParams:
    """Sampling settings for one request, as in ``vllm.SamplingParams``.

    Args:
        n: sequences to return per prompt (at most 256, vLLM's default max_num_seqs).
        temperature: 0 means greedy (argmax); higher is more random (vLLM default 1.0).
        top_p: keep the smallest set of tokens whose probability mass reaches top_p, in (0, 1].
        top_k: keep the k most likely tokens; 0 or -1 keeps all.
        min_p: drop tokens less likely than min_p times the most likely one, in [0, 1].
        repetition_penalty: > 1 discourages tokens already in the prompt or output (1 = off).
        presence_penalty, frequency_penalty: OpenAI-style penalties on output tokens, in [-2, 2].
        seed: seeds this request's random generator (same seed → same tokens on every
            numpy-sampled backend).
        max_tokens: most tokens to generate (vLLM default 16).
        stop: strings that end generation; they are not included in the text.
        stop_token_ids: token ids that end generation (kept in ``token_ids``).
        ignore_eos: keep generating past the end-of-sequence token.
        skip_special_tokens: leave special tokens out of the decoded text.
        logprobs: per generated token, return the log-probabilities of this many most
            likely tokens plus the chosen one (0: the chosen one only; None: none).  As in
            vLLM (``logprobs_mode="raw_logprobs"``) they come from the model's raw logits,
            before temperature, penalties or top-p/top-k.
        prompt_logprobs: the same for every prompt token after the first (teacher forced).

    Raises:
        InvalidRequest: a value is out of range (checked by :meth:`validate`).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
                setattr(self, name, int(value))  # numpy integers, as from a config array

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax (temperature ~ 0)."""
        return self.temperature < _GREEDY_EPS

    def validate(self) -> "SamplingParams":
        """Check every field (messages follow vLLM's); returns self.

        Raises:
            InvalidRequest: the first out-of-range value, saying the allowed range.
        """
        _check(
            isinstance(self.n, int) and not isinstance(self.n, bool) and 1 <= self.n <= MAX_N,
            f"n must be between 1 and {MAX_N}, got {self.n}.",
        )
        _check(
            _num(self.temperature) and self.temperature >= 0,
            f"temperature must be non-negative and finite, got {self.temperature}.",
        )
        _check(
            _num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}."
        )
        _check(
            isinstance(self.top_k, int) and (self.top_k >= 0 or self.top_k == -1),
            f"top_k must be 0 or -1 (disable), or at least 1, got {self.top_k}.",
        )
        _check(
            _num(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}."
        )
        _check(
            _num(self.repetition_penalty) and 0 < self.repetition_penalty <= 100,
            f"repetition_penalty must be in (0, 100], got {self.repetition_penalty}.",
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_num(value) and -2 <= value <= 2, f"{name} must be in [-2, 2], got {value}.")
        _check(
            self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
            f"max_tokens must be at least 1, got {self.max_tokens}.",
        )
        _check(
            self.seed is None or isinstance(self.seed, int),
            f"seed must be an integer, got {self.seed!r}.",
        )
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        # every stop string is looked for after every step: a request's list is bounded, or
        # one request slows the engine for every client (OpenAI's API takes 4)
        _check(len(stop) <= MAX_STOP, f"stop holds {len(stop)} strings, at most {MAX_STOP}.")
        _check(
            all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop),
            f"stop must be non-empty strings of at most {MAX_STOP_CHARS} characters, "
            f"got {str(self.stop)[:200]}.",
        )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(
                value is None
                or (isinstance(value, int) and not isinstance(value, bool) and value >= 0),
                f"{name} must be None or a non-negative integer, got {value!r}.",
            )
        _check(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids or []),
            f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}.",
        )
        return self

    def clone(self, **changes: Any) -> SamplingParams:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``extra`` left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}


def _num(value: object) -> bool:
    """A finite number (not a bool): NaN and infinities pass no range check (temperature
    inf, accepted by ``run -t inf``, is refused by the server's JSON)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int past float's range (10**400): no sampling value either
        return False


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidRequest(message)
