"""What ``LLM.generate`` returns: ``RequestOutput`` holding ``CompletionOutput`` s, as in vLLM."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Logprob:
    """One token's log-probability, as vLLM's ``Logprob``: ``rank`` is 1 for the most likely
    token of the distribution; ``decoded_token`` is the token alone, decoded."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# vLLM's shapes: one {token_id: Logprob} per position (None for the first prompt token)
SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    """One generated sequence.

    ``finish_reason`` is ``"stop"`` (EOS, a stop token or a stop string) or ``"length"``
    (max_tokens or the model's context reached); ``stop_reason`` is the stop string or token
    id that ended it (None for EOS or length), as in vLLM.  ``logprobs`` and
    ``cumulative_logprob`` are set when SamplingParams asked for ``logprobs``.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: SampleLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        """True once the sequence has ended."""
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The result for one prompt: its text and ids, and ``n`` completions.

    ``metrics`` (keishiki's addition) holds timings in seconds: ``first_token_s`` (prompt to
    first token), ``decode_s`` (first to last token) and the backend name.
    ``prompt_logprobs`` is set when SamplingParams asked for ``prompt_logprobs``.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
    metrics: dict = field(default_factory=dict)
    prompt_logprobs: PromptLogprobs | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (what ``keishiki run --json`` prints for each prompt)."""
        return asdict(self)
