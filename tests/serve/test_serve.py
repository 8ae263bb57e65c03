"""``keishiki serve`` through the real ``openai`` client on loopback: the same tokens as
``LLM.generate``, concurrent requests batched, cancellation, back-pressure, auth and errors."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from keishiki.runtimes import SamplingParams
from tests.runtimes.conftest import PROMPTS

from .conftest import MODEL, client, metric, start, wait_for

pytestmark = pytest.mark.slow
GREEDY = dict(temperature=0, max_tokens=12)
NO_EOS = {"ignore_eos": True, "return_token_ids": True}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


def _reference(llm, prompt, **params):
    return llm.generate([prompt], SamplingParams(**params))[0].outputs


def test_models_and_health(server):
    _name, llm, running = server
    models = client(running).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].max_model_len == 256
    assert httpx.get(running.url + "/health").status_code == 200


def test_completions_equal_generate(server):
    """Greedy completions, streamed or not, give generate's tokens and text; usage counts."""
    _name, llm, running = server
    api = client(running)
    for prompt in PROMPTS:
        expected = _reference(llm, prompt, ignore_eos=True, **GREEDY)[0]
        out = api.completions.create(model=MODEL, prompt=prompt, extra_body=NO_EOS, **GREEDY)
        choice = out.choices[0]
        assert choice.token_ids == expected.token_ids and choice.text == expected.text
        assert choice.finish_reason == "length"
        prompt_len = len(llm.tokenizer.encode(prompt))
        assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
            prompt_len,
            12,
            prompt_len + 12,
        )
        chunks = list(
            api.completions.create(
                model=MODEL, prompt=prompt, stream=True, extra_body=NO_EOS, **GREEDY
            )
        )
        assert sum((c.choices[0].token_ids for c in chunks), []) == expected.token_ids
        assert "".join(c.choices[0].text for c in chunks) == expected.text
        assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_equals_llm_chat(server):
    _name, llm, running = server
    api = client(running)
    expected = llm.chat(CHAT, SamplingParams(ignore_eos=True, **GREEDY))[0].outputs[0]
    out = api.chat.completions.create(model=MODEL, messages=CHAT, extra_body=NO_EOS, **GREEDY)
    assert out.choices[0].message.content == expected.text
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].token_ids == expected.token_ids
    rendered = llm.tokenizer.render_chat(CHAT)
    assert out.usage.prompt_tokens == len(llm.tokenizer.encode(rendered, False))
    stream = api.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_chat_n_streams_each_choice(server):
    """n=2 seeded: the streamed choices, told apart by index, equal the non-streamed ones."""
    _name, _llm, running = server
    api = client(running)
    settings = dict(
        model=MODEL,
        messages=CHAT,
        n=2,
        seed=5,
        temperature=1.0,
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    whole = api.chat.completions.create(**settings)
    texts = ["", ""]
    for chunk in api.chat.completions.create(stream=True, **settings):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in whole.choices]
    assert whole.usage.completion_tokens == 16


def test_raw_stream_ends_with_done(server):
    _name, _llm, running = server
    with httpx.stream(
        "POST",
        running.url + "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 3, "stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line for line in response.iter_lines() if line.startswith("data:")]
    assert data[-1] == "data: [DONE]"
    assert json.loads(data[0][5:])["object"] == "text_completion"


def test_seeded_sampling_n_and_extras(server):
    """seed + n + vLLM's extra fields: reproducible, and the same draws as generate."""
    _name, llm, running = server
    api = client(running)
    settings = dict(temperature=0.9, top_p=0.9, seed=1234, max_tokens=10, n=2)
    extra = dict(top_k=50, min_p=0.02, repetition_penalty=1.1, **NO_EOS)
    expected = _reference(
        llm, PROMPTS[1], ignore_eos=True, top_k=50, min_p=0.02, repetition_penalty=1.1, **settings
    )
    first = api.completions.create(model=MODEL, prompt=PROMPTS[1], extra_body=extra, **settings)
    again = api.completions.create(model=MODEL, prompt=PROMPTS[1], extra_body=extra, **settings)
    assert [c.token_ids for c in first.choices] == [e.token_ids for e in expected]
    assert [c.token_ids for c in again.choices] == [e.token_ids for e in expected]
    assert [c.index for c in first.choices] == [0, 1]
    assert expected[0].token_ids != expected[1].token_ids


def test_stop_logprobs_and_echo(server):
    _name, llm, running = server
    api = client(running)
    base = _reference(llm, PROMPTS[2], ignore_eos=True, **GREEDY)[0]
    stop = base.text[4:6]
    expected = _reference(llm, PROMPTS[2], ignore_eos=True, stop=[stop], logprobs=2, **GREEDY)[0]
    out = api.completions.create(
        model=MODEL,
        prompt=PROMPTS[2],
        stop=[stop],
        logprobs=2,
        echo=True,
        extra_body=NO_EOS,
        **GREEDY,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and choice.stop_reason == stop
    assert choice.text == PROMPTS[2] + expected.text
    prompt_ids = llm.tokenizer.encode(PROMPTS[2])
    lp = choice.logprobs
    assert len(lp.tokens) == len(prompt_ids) + len(expected.token_ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    generated = lp.token_logprobs[len(prompt_ids) :]
    wanted = [step[t].logprob for step, t in zip(expected.logprobs, expected.token_ids)]
    assert generated == pytest.approx(wanted, abs=1e-4)
    # the 2 most likely and the chosen one (OpenAI: "up to logprobs+1 elements")
    assert all(len(top) <= 3 for top in lp.top_logprobs[1:])
    assert all(t in top for t, top in zip(lp.tokens[1:], lp.top_logprobs[1:]))
    chat = api.chat.completions.create(
        model=MODEL, messages=CHAT, logprobs=True, top_logprobs=3, **GREEDY
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(
        len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-9 for t in content
    )


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_logprobs_continue_the_text(server, echo):
    """A stream's text_offsets run on from chunk to chunk (they restarted at 0 in each),
    equal to the whole answer's; a sampled token is always among its top_logprobs."""
    _name, llm, running = server
    api = client(running)
    ask = dict(
        model=MODEL, prompt=PROMPTS[1], max_tokens=8, logprobs=2, echo=echo, extra_body=NO_EOS
    )
    ask.update(temperature=1.0, seed=3)
    whole = api.completions.create(**ask).choices[0].logprobs
    streamed = {"text_offset": [], "tokens": [], "top_logprobs": []}
    for chunk in api.completions.create(**ask, stream=True):
        for c in chunk.choices:
            for key in streamed:
                streamed[key] += getattr(c.logprobs, key)
    assert streamed["text_offset"] == whole.text_offset
    assert streamed["tokens"] == whole.tokens
    assert whole.text_offset == sorted(whole.text_offset) and whole.text_offset[-1] > 0
    first = len(llm.tokenizer.encode(PROMPTS[1])) if echo else 0
    for top, tok in zip(whole.top_logprobs[first:], whole.tokens[first:]):
        assert tok in top and len(top) <= 3


def test_concurrent_clients_are_batched(server):
    """16 streaming clients at once: each gets what it gets alone, and the decode steps held
    more than one sequence (a request joined the batch while another was decoding)."""
    _name, llm, running = server
    api = client(running)
    prompts = [f"{PROMPTS[i % 3]} {i}" for i in range(16)]
    expected = [
        _reference(llm, p, ignore_eos=True, temperature=0, max_tokens=8 + i)[0]
        for i, p in enumerate(prompts)
    ]
    joined_before = metric(running, "requests_joined_running_batch_total")
    single_before = metric(running, "batch_size_bucket", le="1.0")
    steps_before = metric(running, "batch_size_count")
    long_run = api.completions.create(
        model=MODEL,
        prompt="A long one",
        max_tokens=200,
        temperature=0,
        stream=True,
        extra_body=NO_EOS,
    )
    first = next(iter(long_run))  # it is decoding now: the others must join it

    def ask(i):
        chunks = api.completions.create(
            model=MODEL,
            prompt=prompts[i],
            max_tokens=8 + i,
            temperature=0,
            stream=True,
            extra_body=NO_EOS,
        )
        return sum((c.choices[0].token_ids for c in chunks), [])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, range(16)))
    rest = sum((c.choices[0].token_ids for c in long_run), [])
    assert len(first.choices[0].token_ids) + len(rest) == 200
    assert got == [e.token_ids for e in expected]
    assert metric(running, "requests_joined_running_batch_total") >= joined_before + 16
    multi = (metric(running, "batch_size_count") - steps_before) - (
        metric(running, "batch_size_bucket", le="1.0") - single_before
    )
    assert multi > 16  # steps that decoded more than one sequence
    assert metric(running, "num_requests_running") == 0


def test_disconnect_cancels(server):
    _name, _llm, running = server
    cancelled = metric(running, "request_cancelled_total")
    tokens = metric(running, "generation_tokens_total")
    with httpx.stream(
        "POST",
        running.url + "/v1/completions",
        json={"prompt": "Go on", "max_tokens": 240, "stream": True, "ignore_eos": True},
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    # the response is closed mid-stream: the request leaves the batch
    wait_for(
        lambda: metric(running, "request_cancelled_total") == cancelled + 1, "the cancellation"
    )
    wait_for(lambda: metric(running, "num_requests_running") == 0, "an empty batch")
    assert metric(running, "generation_tokens_total") - tokens < 240
    out = client(running).completions.create(model=MODEL, prompt="still here", max_tokens=2)
    assert out.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "The model `other` does not"),
        ("/v1/chat/completions", {"model": MODEL}, 400, "messages: Field required"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
        (
            "/v1/completions",
            {"prompt": "x", "max_tokens": 300},
            400,
            "maximum context length is 256 tokens",
        ),
        ("/v1/completions", {"prompt": "x", "n": -1}, 400, "n must be between 1 and 256"),
        ("/v1/completions", {"prompt": "x", "n": 17}, 400, "at most 16 (--max-num-seqs)"),
        ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature must be non"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "more than the maximum"),
        ("/v1/completions", {"prompt": ""}, 400, "the prompt is empty"),
        ("/v1/completions", {"prompt": [[5, 999999]]}, 400, "outside the model's vocabulary"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 1}}, 400, "logit_bias"),
        ("/v1/completions", b'{"prompt": "x",', 400, "malformed JSON"),
        ("/v1/completions", b"x" * (4 * 2**20 + 1), 413, "larger than"),
        ("/v1/nothing", {}, 404, "Not Found"),
        ("/detokenize", {"tokens": [-1]}, 400, "outside the model's vocabulary"),
    ],
)
def test_bad_requests(server, path, body, status, message):
    _name, _llm, running = server
    send = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(running.url + path, headers={"content-type": "application/json"}, **send)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and set(error) >= {"message", "type", "code"}
    assert "Traceback" not in response.text
    assert httpx.get(running.url + "/health").status_code == 200  # still serving


def test_bad_request_through_the_client(server):
    import openai

    _name, _llm, running = server
    with pytest.raises(openai.BadRequestError) as caught:
        client(running).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=999)
    assert caught.value.status_code == 400
    assert "maximum context length" in caught.value.body["message"]


def test_tokenize_detokenize(server):
    _name, llm, running = server
    out = httpx.post(running.url + "/tokenize", json={"prompt": PROMPTS[0]}).json()
    assert out["tokens"] == llm.tokenizer.encode(PROMPTS[0])
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] == 256
    chat = httpx.post(running.url + "/tokenize", json={"messages": CHAT}).json()
    assert chat["tokens"] == llm.tokenizer.encode(llm.tokenizer.render_chat(CHAT), False)
    back = httpx.post(running.url + "/detokenize", json={"tokens": out["tokens"]}).json()
    assert back == {"prompt": llm.tokenizer.decode(out["tokens"], False)}


def test_metrics_exposition(server):
    _name, _llm, running = server
    client(running).completions.create(
        model=MODEL, prompt="count me", max_tokens=4, extra_body={"ignore_eos": True}
    )
    text = httpx.get(running.url + "/metrics").text
    for name in (
        "num_requests_running",
        "num_requests_waiting",
        "prompt_tokens_total",
        "generation_tokens_total",
        "request_success_total",
        "time_to_first_token_seconds_bucket",
        "inter_token_latency_seconds_count",
        "e2e_request_latency_seconds_sum",
        "batch_size_bucket",
    ):
        assert f"keishiki:{name}{{" in text, name
    assert metric(running, "time_to_first_token_seconds_count") >= 1
    assert metric(running, "inter_token_latency_seconds_count") >= 3


# -- servers with their own settings (onnxruntime: the quicker of the two) ------------------


def test_full_queue_answers_503(served_llms):
    """One slot, one waiting place: a third request is refused with 503 and Retry-After;
    the waiting one runs once the slot frees."""
    import openai

    with start(served_llms["onnxruntime"], max_num_seqs=1, max_queue_len=1) as running:
        api = client(running)
        busy = api.completions.create(
            model=MODEL, prompt="busy", max_tokens=240, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(busy))  # running: the one slot is taken
        waiting = {}
        thread = threading.Thread(
            target=lambda: waiting.setdefault(
                "out", api.completions.create(model=MODEL, prompt="waits", max_tokens=2)
            )
        )
        thread.start()
        wait_for(lambda: metric(running, "num_requests_waiting") == 1, "a waiting request")
        with pytest.raises(openai.APIStatusError) as caught:
            api.completions.create(model=MODEL, prompt="refused", max_tokens=2)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "1"
        assert "busy" in caught.value.body["message"]
        assert metric(running, "request_rejected_total") == 1
        busy.close()  # disconnect: the slot frees, the waiting request runs
        thread.join(timeout=60)
        assert waiting["out"].usage.completion_tokens >= 1


def test_api_key(served_llms):
    import openai

    with start(served_llms["onnxruntime"], api_key="s3cret") as running:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(running, "wrong").models.list()
        assert caught.value.status_code == 401
        assert caught.value.body["code"] == "invalid_api_key"
        assert httpx.post(running.url + "/tokenize", json={"prompt": "x"}).status_code == 401
        assert [m.id for m in client(running, "s3cret").models.list().data] == [MODEL]
        assert httpx.get(running.url + "/health").status_code == 200
        assert httpx.get(running.url + "/metrics").status_code == 200


def test_chat_template_flag(served_llms):
    llm = served_llms["onnxruntime"]
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    with start(llm, chat_template=template) as running:
        out = httpx.post(running.url + "/tokenize", json={"messages": CHAT}).json()
    assert out["tokens"] == llm.tokenizer.encode("<system>Be brief.<user>Hello there", False)


def test_disconnect_cancels_a_non_streaming_request(served_llms, monkeypatch):
    """A client that gives up on a non-streaming request cancels it too (the server polls
    for the disconnect while it waits).  The model is slowed down so the request cannot
    finish before the client leaves."""
    import time

    llm = served_llms["onnxruntime"]
    forward = llm._engine._forward

    def slow(*args):
        time.sleep(0.01)
        return forward(*args)

    monkeypatch.setattr(llm._engine, "_forward", slow)
    with start(llm) as running:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                running.url + "/v1/completions",
                timeout=0.5,
                json={"prompt": "slow", "max_tokens": 240, "ignore_eos": True},
            )
        wait_for(lambda: metric(running, "request_cancelled_total") == 1, "the cancellation")
        assert metric(running, "generation_tokens_total") < 240
        assert metric(running, "num_requests_running") == 0
