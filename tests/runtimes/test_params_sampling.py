"""SamplingParams checks and the shared numpy sampler, without any model."""

from __future__ import annotations

import numpy as np
import pytest

from keishiki.errors import InvalidRequest
from keishiki.runtimes import SamplingParams
from keishiki.runtimes.sampling import make_rng, probabilities, sample_token


def test_defaults_are_vllms():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p, p.max_tokens, p.seed) == (
        1,
        1.0,
        1.0,
        0,
        0.0,
        16,
        None,
    )
    assert p.stop == [] and p.stop_token_ids == [] and not p.greedy
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(stop="x").stop == ["x"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_p": 0}, "top_p must be in (0, 1], got 0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"max_tokens": -3}, "max_tokens must be at least 1, got -3"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"n": 0}, "n must be between 1 and 256, got 0"),
        ({"n": 10**6}, "n must be between 1 and 256, got 1000000"),
        ({"n": True}, "n must be between 1 and 256"),
        ({"temperature": -1}, "temperature must be non-negative"),
        ({"top_k": -5}, "top_k must be 0 or -1"),
        ({"min_p": 2}, "min_p must be in [0, 1]"),
        ({"repetition_penalty": 0}, "repetition_penalty must be in (0, 100]"),
        ({"temperature": float("nan")}, "temperature must be non-negative"),
        ({"temperature": float("inf")}, "temperature must be non-negative and finite, got inf"),
        ({"temperature": 10**400}, "temperature must be non-negative"),  # (isfinite overflows)
        ({"stop": [""]}, "stop must be non-empty strings"),
        # every stop string is searched after every step: one request must not stall all
        ({"stop": ["x"] * 65}, "stop holds 65 strings, at most 64"),
        ({"stop": ["x" * 1025]}, "stop must be non-empty strings of at most 1024 characters"),
        ({"stop_token_ids": [-1]}, "stop_token_ids must be non-negative"),
        ({"logprobs": -1}, "logprobs must be None or a non-negative integer, got -1"),
        ({"prompt_logprobs": 2.5}, "prompt_logprobs must be None or a non-negative integer"),
    ],
)
def test_validation_messages(kwargs, message):
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**kwargs).validate()
    assert message in str(info.value)


LOGITS = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1]))


def test_top_logprobs_ranks_and_values():
    from keishiki.runtimes.sampling import top_logprobs

    got = top_logprobs(LOGITS + 7.0, 0, 2)  # a shift changes no log-probability
    assert list(got) == [0, 1, 2]  # the chosen token first, then the top 2 in order
    assert got[0][1] == 5 and got[1][1] == 1 and got[2][1] == 2
    assert np.allclose([got[t][0] for t in (0, 1, 2)], np.log([0.05, 0.4, 0.3]))
    assert list(top_logprobs(LOGITS, 1, 0)) == [1]
    assert len(top_logprobs(LOGITS, 3, 50)) == 5  # k beyond the vocabulary: all of it


def test_greedy_and_filters_that_leave_one_token_pick_the_argmax():
    rng = make_rng(0)
    assert sample_token(LOGITS, SamplingParams(temperature=0), rng, [], []) == 1
    for params in (SamplingParams(top_k=1), SamplingParams(top_p=0.01), SamplingParams(min_p=1.0)):
        assert {sample_token(LOGITS, params, make_rng(s), [], []) for s in range(20)} == {1}


def test_filters_keep_the_expected_sets():
    def kept(**kw):
        return set(np.flatnonzero(probabilities(LOGITS.copy(), SamplingParams(**kw))))

    assert kept(top_k=2) == {1, 2}
    assert kept(top_p=0.7) == {1, 2}  # 0.4 + 0.3 reaches 0.7
    assert kept(top_p=0.71) == {1, 2, 3}
    assert kept(min_p=0.3) == {1, 2, 3}  # 0.15 >= 0.3 * 0.4, 0.1 < 0.12
    probs = probabilities(LOGITS.copy(), SamplingParams(top_k=2))
    np.testing.assert_allclose(probs[[1, 2]], [0.4 / 0.7, 0.3 / 0.7])


def test_temperature_sharpens():
    cold = probabilities(LOGITS.copy(), SamplingParams(temperature=0.5))
    expected = np.array([0.05, 0.4, 0.3, 0.15, 0.1]) ** 2
    np.testing.assert_allclose(cold, expected / expected.sum())


def test_draws_follow_the_distribution():
    rng = make_rng(123)
    draws = [sample_token(LOGITS, SamplingParams(), rng, [], []) for _ in range(20000)]
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, [0.05, 0.4, 0.3, 0.15, 0.1], atol=0.015)


def test_same_seed_same_tokens_and_streams_per_completion():
    params = SamplingParams(temperature=1.0)
    a = [sample_token(LOGITS, params, r, [], []) for r in [make_rng(7)] for _ in range(50)]
    rng = make_rng(7)
    b = [sample_token(LOGITS, params, rng, [], []) for _ in range(50)]
    assert a == b
    other = make_rng(7, index=1)
    assert [sample_token(LOGITS, params, other, [], []) for _ in range(50)] != a


def test_repetition_penalty_changes_greedy_choice():
    # token 1 leads; penalising tokens already seen (1) hands the argmax to token 2
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    logits = np.array([0.0, 2.0, 1.5, -1.0])
    assert sample_token(logits, SamplingParams(temperature=0), make_rng(0), [], []) == 1
    assert sample_token(logits, params, make_rng(0), [1], []) == 2
    # negative logits are multiplied (pushed down), positive divided
    assert sample_token(np.array([-1.0, -1.5]), params, make_rng(0), [0], []) == 1


def test_logprobs_accept_numpy_integers():
    params = SamplingParams(logprobs=np.int64(2), prompt_logprobs=np.int32(0)).validate()
    assert (params.logprobs, params.prompt_logprobs) == (2, 0)
    assert type(params.logprobs) is int


class _ByteTokenizer:
    """Each token is one byte of UTF-8: a multi-byte character takes several steps."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", "replace")


@pytest.mark.parametrize(
    "stop, cut_at_step, text",
    [
        (["\ufffd"], None, "aé!"),  # the half-decoded é must not match U+FFFD
        (["é"], 3, "a"),  # a stop string matches once the character is whole
        (["é!"], 4, "a"),
    ],
)
def test_stop_strings_match_complete_characters_only(stop, cut_at_step, text):
    from types import SimpleNamespace

    from keishiki.runtimes.llm import _TextTracker

    tracker = _TextTracker(_ByteTokenizer(), SamplingParams(stop=stop))
    data = list("aé!".encode())  # a, 0xC3, 0xA9, !
    seq = SimpleNamespace(
        text=None, output_ids=[], finished=False, finish_reason=None, stop_reason=None
    )
    stopped_at = None
    for step, token in enumerate(data, 1):
        seq.output_ids.append(token)
        seq.finished = step == len(data)
        final = tracker.final_text(seq)
        if seq.finish_reason == "stop":
            stopped_at = step
            break
    assert stopped_at == cut_at_step and final == text
