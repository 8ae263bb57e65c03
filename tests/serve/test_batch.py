"""``DecodeBatch``: sequences that join a running batch and leave it early get the tokens
they get alone, on every loop backend (the engine of ``keishiki serve``)."""

from __future__ import annotations

import pytest

from keishiki.runtimes import SamplingParams
from keishiki.runtimes.batch import DecodeBatch
from tests.runtimes.conftest import PROMPTS

pytestmark = pytest.mark.slow
PARAMS = [
    SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
    SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=20, ignore_eos=True, logprobs=2),
    SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[5]),
]
TEXTS = PROMPTS + ["a"]


@pytest.mark.parametrize("name", ["torch", "onnxruntime", "torchscript", "torchscript-kv"])
def test_join_and_leave_give_the_tokens_of_a_lone_run(llms, name):
    llm = llms[name]
    alone = [llm.generate([t], p)[0].outputs[0] for t, p in zip(TEXTS, PARAMS)]
    seqs = [llm._sequences([llm.tokenizer.encode(t)], [p])[0] for t, p in zip(TEXTS, PARAMS)]
    batch = DecodeBatch(llm._engine, capacity=4)
    sizes = []
    waiting = list(seqs)
    while waiting or batch.size:
        if waiting and batch.free and (batch.size == 0 or len(sizes) % 3 == 0):
            take = min(batch.free, 2)  # two at a time, every third step: mid-decode joins
            batch.join(waiting[:take])
            waiting = waiting[take:]
        sizes.append(batch.size)
        batch.step()
    assert [s.output_ids for s in seqs] == [a.token_ids for a in alone]
    assert [s.finish_reason for s in seqs] == [a.finish_reason for a in alone]
    wanted = [step[t].logprob for step, t in zip(alone[1].logprobs, alone[1].token_ids)]
    got = [step[t][0] for step, t in zip(seqs[1].logprobs, seqs[1].output_ids)]
    assert got == pytest.approx(wanted, abs=1e-4)
    if llm._engine.batchable:
        assert batch.capacity == 4 and batch.joins >= 1 and max(sizes) > 1
    else:  # a trace without a mask input cannot take padded rows: one at a time
        assert batch.capacity == 1 and max(sizes) == 1


def test_cancelled_rows_leave_and_the_rest_carry_on(llms):
    llm = llms["onnxruntime"]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    alone = llm.generate(PROMPTS[:2], params)
    seqs = llm._sequences([llm.tokenizer.encode(t) for t in PROMPTS[:2]], [params] * 2)
    batch = DecodeBatch(llm._engine)
    batch.join(seqs)
    batch.step()
    seqs[0].finish_reason = "abort"
    gone = batch.drop_finished()
    assert gone == [seqs[0]] and batch.size == 1
    while batch.size:
        batch.step()
    assert seqs[1].output_ids == alone[1].outputs[0].token_ids
    assert len(seqs[0].output_ids) == 2


def test_a_model_without_a_mask_says_why_it_takes_one_sequence(llms):
    """A TorchScript trace of ids alone decodes one row at a time: n=2 is refused with the
    reason (it said to raise --max-num-seqs, which cannot help), n=1 runs."""
    import httpx

    from tests.serve.conftest import MODEL, start

    with start(llms["torchscript"], max_num_seqs=8) as server:
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
        refused = httpx.post(server.url + "/v1/completions", json={**body, "n": 2}, timeout=60)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == (
            "this model decodes one sequence at a time (its graph takes no attention mask): "
            "n × prompts must be 1, got 2 × 1"
        )
        assert httpx.post(server.url + "/v1/completions", json=body, timeout=60).status_code == 200
