"""Hostile and odd HTTP requests against ``keishiki serve``: each gets an OpenAI-shaped JSON
error with the right status (never a 500 with a traceback, never a hang), and the server
keeps serving afterwards with no batch slot leaked."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import MODEL, metric, start, wait_for

pytestmark = pytest.mark.slow
OK = dict(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
CHAT = dict(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)


@pytest.fixture(scope="module")
def llm(tiny_llama):
    """The tiny Llama on torch alone (served_llms would export ONNX too, which these
    tests do not need)."""
    from keishiki import LLM

    return LLM(model=tiny_llama)


@pytest.fixture(scope="module")
def running(llm):
    with start(llm, max_num_seqs=8) as server:
        yield server


def _post(
    server, path: str, body=None, *, raw: bytes | None = None, headers=None, timeout: float = 60
) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(
        server.url + path,
        content=content,
        timeout=timeout,
        headers={"content-type": "application/json", **(headers or {})},
    )


def _assert_error(resp: httpx.Response, status: int, needle: str = "") -> dict:
    """``resp`` is an OpenAI error body with ``status`` (and ``needle`` in its message)."""
    assert resp.status_code == status, resp.text[:500]
    assert "Traceback" not in resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert needle.lower() in error["message"].lower(), error["message"]
    return error


def _assert_serving(server) -> None:
    """A normal request still works and no request is left in the batch or the queue."""
    out = _post(server, "/v1/completions", OK)
    assert out.status_code == 200, out.text
    assert out.json()["choices"][0]["finish_reason"] in ("length", "stop")
    wait_for(lambda: metric(server, "num_requests_running") == 0, "an empty batch")
    assert metric(server, "num_requests_waiting") == 0


# -- bodies that are not a request ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw, headers, status, needle",
    [
        (b"{", {}, 400, "malformed JSON"),
        (b'{"prompt": "x",}', {}, 400, "malformed JSON"),
        (b"", {}, 400, ""),
        (b"[1, 2, 3]", {}, 400, "dictionary"),
        (b"42", {}, 400, "dictionary"),
        (b'"just a string"', {}, 400, "dictionary"),
        (b"null", {}, 400, ""),
        (json.dumps(OK).encode(), {"content-type": "text/plain"}, 400, ""),
        (json.dumps(OK).encode(), {"content-type": "application/x-www-form-urlencoded"}, 400, ""),
        (b"\xff\xfe not utf-8", {}, 400, ""),
    ],
)
def test_not_a_request(running, raw, headers, status, needle):
    error = _assert_error(
        _post(running, "/v1/completions", raw=raw, headers=headers), status, needle
    )
    if needle == "malformed JSON":  # no field to name (it named the character offset: "18")
        assert error["param"] is None


# -- completions fields out of range -------------------------------------------------------


def _nan(field: str, value: str) -> bytes:
    """A body with a bare NaN/Infinity literal (not JSON, but Python's json reads it)."""
    body = json.dumps({**OK, field: 0})
    return body.replace(f'"{field}": 0', f'"{field}": {value}').encode()


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"max_tokens": 10**30}, "maximum context length"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"n": 0}, "n must be"),
        ({"n": -3}, "n must be"),
        ({"n": 10**9}, "n must be"),
        ({"n": 10**40}, "n must be"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": 1e309}, "temperature"),  # json.dumps writes Infinity
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 9}, "presence_penalty"),
        ({"logprobs": 10**6}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": 10**6, "echo": True}, "logprobs"),
        ({"seed": 1.5}, "seed"),
        ({"stop": ""}, "stop"),
        ({"stop": [1, 2]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "x"}, "suffix"),
        ({"prompt": ""}, "empty"),
        ({"prompt": []}, "empty"),
        ({"prompt": [[]]}, "empty"),
        ({"prompt": [""]}, "empty"),
        ({"prompt": [10**9]}, "vocabulary"),
        ({"prompt": [-1]}, "vocabulary"),
        ({"prompt": [[1, 2], [10**9]]}, "vocabulary"),
        ({"prompt": [2**70]}, "vocabulary"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": {"a": 1}}, "prompt"),
        ({"prompt": "word " * 400}, "maximum context length"),
        ({"prompt": list(range(5, 300))}, "maximum context length"),
        ({"prompt": ["a"] * 64}, "max-num-seqs"),
        ({"model": "other"}, "does not exist"),
        ({"stream_options": "yes"}, "stream_options"),
        # each stop string is searched after every step: 380,000 of them stalled the engine
        # for every client (28 s for one request)
        ({"stop": [f"never{i}" for i in range(10_000)]}, "at most 64"),
        ({"stop": ["x" * 2**20]}, "at most 1024 characters"),
    ],
)
def test_bad_completion_fields(running, change, needle):
    status = 404 if "model" in change else 400
    _assert_error(_post(running, "/v1/completions", {**OK, **change}), status, needle)


@pytest.mark.parametrize("prompt", [["a"] * 20_000, [[5, 6]] * 20_000])
def test_too_many_prompts_are_refused_before_any_is_tokenized(running, llm, monkeypatch, prompt):
    """The count of prompts alone says 400: 200,000 one-character prompts took 25 s of the
    server's CPU, tokenized (or token ids decoded on the event loop) before the refusal."""
    calls = []
    tok = llm.tokenizer
    for obj, name in ((tok._tok, "encode_batch"), (tok, "decode")):
        real = getattr(obj, name)
        monkeypatch.setattr(
            obj, name, lambda *a, _real=real, _n=name, **k: (calls.append(_n), _real(*a, **k))[1]
        )
    response = _post(running, "/v1/completions", {**OK, "prompt": prompt})
    _assert_error(response, 400, "n × prompts must be at most 8 (--max-num-seqs), got 1 × 20000")
    assert calls == []
    assert _post(running, "/v1/completions", OK).status_code == 200 and calls


@pytest.mark.parametrize(
    "field, literal",
    [
        ("temperature", "NaN"),
        ("temperature", "Infinity"),
        ("top_p", "NaN"),
        ("min_p", "NaN"),
        ("presence_penalty", "-Infinity"),
        ("repetition_penalty", "Infinity"),
        ("max_tokens", "NaN"),
        ("seed", "NaN"),
    ],
)
def test_nan_and_infinity_are_refused(running, field, literal):
    _assert_error(_post(running, "/v1/completions", raw=_nan(field, literal)), 400, field)


def test_odd_but_valid_fields(running):
    """Values at the edges that are allowed: seeds of any int (folded into 64 bits, see
    ``make_rng``), top_k -1, the longest stop list and strings allowed (64 of 1024
    characters), token-id prompts, unicode."""
    for change in (
        {"seed": -1},
        {"seed": 2**63 - 1},
        {"seed": -(2**63)},
        {"seed": 10**100},
        {"seed": -(10**100)},
        {"top_k": -1},
        {"top_p": 1e-9},
        {"temperature": 0.0},
        {"stop": [f"never{i}" for i in range(64)]},
        {"stop": ["x" * 1024, "y" * 1024]},
        {"prompt": [1, 2, 3]},
        {"prompt": [[5, 6], [7]]},
        {"prompt": "héllo 日本 🦙 \u0000"},
        {"user": "u" * 10_000},
    ):
        out = _post(running, "/v1/completions", {**OK, **change})
        assert out.status_code == 200, (
            change if len(str(change)) < 200 else list(change),
            out.text[:300],
        )
        assert len(out.json()["choices"]) >= 1
    _assert_serving(running)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/completions", {**OK, "prompt": "\ud800 lone surrogate"}),
        ("/v1/completions", {**OK, "prompt": "\udfff", "echo": True}),
        ("/v1/completions", {**OK, "stop": ["\ud800"]}),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a\ud800"}]}),
        ("/tokenize", {"model": MODEL, "prompt": "\ud800"}),
    ],
)
def test_lone_surrogates(running, path, body):
    """JSON may escape a lone surrogate (``"\\ud800"``), which is no UTF-8 text: a 400 (or
    text with the surrogate replaced), never a 500."""
    out = _post(running, path, body)  # json.dumps escapes it as \ud800
    assert out.status_code in (200, 400), out.text[:300]
    if out.status_code == 400:
        _assert_error(out, 400, "")
    _assert_serving(running)


# -- chat --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages, status, needle",
    [
        ([], 400, "messages"),
        ("hi", 400, "messages"),
        ([{"content": "no role"}], 400, "role"),
        ([{"role": "user", "content": 5}], 400, "content"),
        ([{"role": "user", "content": {"a": 1}}], 400, "content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            400,
            "text content",
        ),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], 400, "text content"),
        ([{"role": "user", "content": [1, 2]}], 400, "content"),
        ([{"role": "user", "content": "hi"}] * 10_000, 400, "maximum context length"),
        ([{"role": 7, "content": "x"}], 400, "role"),
    ],
)
def test_bad_chat_messages(running, messages, status, needle):
    body = {**CHAT, "messages": messages}
    _assert_error(_post(running, "/v1/chat/completions", body), status, needle)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"top_logprobs": 10**6, "logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs set to true"),
        ({"max_completion_tokens": 10**12}, "maximum context length"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"n": 10**9}, "n must be"),
    ],
)
def test_bad_chat_fields(running, change, needle):
    _assert_error(_post(running, "/v1/chat/completions", {**CHAT, **change}), 400, needle)


def test_unknown_roles_and_none_content(running):
    """Roles the template does not know and ``content: null`` are the template's business:
    a completion or a 400 from the template, never a 500."""
    for messages in (
        [{"role": "wizard", "content": "hi"}],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": "x", "name": {"nested": [1]}}],
    ):
        out = _post(running, "/v1/chat/completions", {**CHAT, "messages": messages})
        assert out.status_code in (200, 400), out.text[:300]
        if out.status_code == 400:
            _assert_error(out, 400)
    _assert_serving(running)


# -- tokenize ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, needle",
    [
        ("/tokenize", {}, "prompt or messages"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {"messages": "x"}, "messages"),
        ("/detokenize", {"tokens": [-1]}, "vocabulary"),
        ("/detokenize", {"tokens": [2**70]}, "vocabulary"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
    ],
)
def test_bad_tokenize(running, path, body, needle):
    _assert_error(_post(running, path, body), 400, needle)


def test_tokenize_huge_input(running, llm):
    """1 MB of text (under the body limit) is tokenized, on a worker thread, to the same ids
    as the tokenizer; 5 MB is refused before reading."""
    text = "lorem ipsum dolor " * (2**20 // 18)
    out = _post(running, "/tokenize", {"prompt": text}, timeout=120)
    assert out.status_code == 200
    assert out.json()["tokens"] == llm.tokenizer.encode(text)
    _assert_error(_post(running, "/tokenize", {"prompt": "x" * 5 * 2**20}), 413, "larger")
    _assert_serving(running)


# -- body size and the API key -----------------------------------------------------------


def _raw_http(server, request: bytes) -> bytes:
    """Send ``request`` as raw bytes; the whole answer (or what came before the close)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and b'"error"' in b"".join(chunks):
                break
    return b"".join(chunks)


def test_body_size_limits(llm):
    limit = 2048
    with start(llm, max_num_seqs=2, max_body_bytes=limit) as server:
        filler = json.dumps({**OK, "user": ""})
        at_limit = filler.replace('"user": ""', '"user": "' + "u" * (limit - len(filler)) + '"')
        assert len(at_limit) == limit
        assert _post(server, "/v1/completions", raw=at_limit.encode()).status_code == 200
        over = at_limit.replace('"user": "', '"user": "u')
        _assert_error(_post(server, "/v1/completions", raw=over.encode()), 413, "larger")

        # chunked, no Content-Length: counted while read, refused once past the limit
        def chunks():
            for _ in range(64):
                yield b" " * 256
            yield json.dumps(OK).encode()

        out = httpx.post(
            server.url + "/v1/completions",
            content=chunks(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        _assert_error(out, 413, "larger")
        # a Content-Length that lies (says small, sends more) or is not a number
        answer = _raw_http(
            server,
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 99999999999999999999\r\n\r\n{}",
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        answer = _raw_http(
            server,
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(4))
            + b"0\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        _assert_serving(server)


@pytest.mark.parametrize(
    "authorization, status",
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer wrong", 401),
        ("Bearer s3cret-but-longer", 401),
        ("Bearer s3cre", 401),
        ("Basic s3cret", 401),
        ("s3cret", 401),
        ("Bearer  s3cret", 401),
        ("Bearer s3cret", 200),
    ],
)
def test_api_key(api_server, authorization, status):
    headers = {} if authorization is None else {"authorization": authorization}
    out = httpx.get(api_server.url + "/v1/models", headers=headers)
    if status == 200:
        assert out.status_code == 200
    else:
        _assert_error(out, 401, "api key")
        assert out.headers["www-authenticate"] == "Bearer"
    # /health and /metrics stay open (load balancers, Prometheus)
    assert httpx.get(api_server.url + "/health").status_code == 200


def test_api_key_checked_before_the_body(api_server):
    """A request without the key is refused before its (huge) body is read."""
    out = httpx.post(
        api_server.url + "/v1/completions",
        content=b"x" * (8 * 2**20),
        headers={"content-type": "application/json"},
    )
    _assert_error(out, 401, "api key")
    ok = httpx.post(
        api_server.url + "/v1/completions", json=OK, headers={"authorization": "Bearer s3cret"}
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "host, status",
    [
        ("127.0.0.1", 200),
        ("127.0.0.1:8000", 200),
        ("localhost:8000", 200),
        ("LOCALHOST", 200),
        ("[::1]:8000", 200),
        ("attacker.example", 403),  # a page whose name was rebound to 127.0.0.1
        ("attacker.example:8000", 403),
        ("127.0.0.1.attacker.example", 403),
        ("", 403),
    ],
)
def test_a_local_server_without_a_key_answers_only_local_names(llm, host, status):
    """DNS rebinding: with no API key on a loopback address (what `keishiki serve` sets as
    local_only), a request that names another host is refused before any route runs."""
    with start(llm, max_num_seqs=2, local_only=True) as server:
        out = httpx.get(server.url + "/v1/models", headers={"host": host})
    assert out.status_code == status
    if status == 403:
        _assert_error(out, 403, "addressed to 127.0.0.1")


@pytest.fixture(scope="module")
def api_server(llm):
    with start(llm, max_num_seqs=2, api_key="s3cret") as server:
        yield server


# -- disconnects, back-pressure, shutdown --------------------------------------------------


@pytest.fixture
def slow_model(llm, monkeypatch):
    """The torch model with 10 ms added to each forward pass, so that a request of 200
    tokens is still running when its client leaves (the tiny model is done in < 1 s)."""
    import time

    forward = llm._engine._forward

    def slow(*args):
        time.sleep(0.01)
        return forward(*args)

    monkeypatch.setattr(llm._engine, "_forward", slow)
    return llm


@pytest.mark.parametrize(
    "path, body",
    [
        # return_token_ids: a chunk per token (the tiny model's random bytes are held back as
        # incomplete UTF-8 until the end otherwise)
        (
            "/v1/completions",
            {**OK, "max_tokens": 200, "ignore_eos": True, "stream": True, "return_token_ids": True},
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "max_tokens": 200, "ignore_eos": True, "stream": True, "n": 3},
        ),
    ],
)
def test_stream_disconnects_leak_no_slot(running, slow_model, path, body):
    """Twenty clients in a row drop their stream after the first chunk: every one is
    cancelled and the batch is empty again."""
    cancelled = metric(running, "request_cancelled_total")
    for _ in range(20):
        with httpx.stream("POST", running.url + path, json=body, timeout=30) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    break
    wait_for(
        lambda: metric(running, "request_cancelled_total") >= cancelled + 20, "20 cancellations"
    )
    _assert_serving(running)


def test_abrupt_socket_close(running, slow_model):
    """A client that sends its request and closes the socket at once, streaming or not."""
    cancelled = metric(running, "request_cancelled_total")
    for stream in (True, False):
        body = json.dumps({**OK, "max_tokens": 200, "ignore_eos": True, "stream": stream}).encode()
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", running.port)) as sock:
                sock.sendall(
                    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
    wait_for(
        lambda: (
            metric(running, "request_cancelled_total") >= cancelled + 10
            and metric(running, "num_requests_running") == 0
        ),
        "10 cancellations",
    )
    _assert_serving(running)


def test_flood_with_a_queue_of_four(llm):
    """50 concurrent requests against 2 slots and a queue of 4: the rest get 503 with
    Retry-After at once, and every accepted request completes."""
    with start(llm, max_num_seqs=2, max_queue_len=4) as server:
        body = {**OK, "max_tokens": 24, "ignore_eos": True}

        def one(_):
            return _post(server, "/v1/completions", body)

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(one, range(50)))
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(503) > 0 and statuses.count(200) >= 6
        for answer in answers:
            if answer.status_code == 503:
                _assert_error(answer, 503, "busy")
                assert answer.headers["retry-after"] == "1"
            else:
                choice = answer.json()["choices"][0]
                assert choice["finish_reason"] == "length"
                assert answer.json()["usage"]["completion_tokens"] == 24
        assert metric(server, "request_rejected_total") == statuses.count(503)
        _assert_serving(server)


def test_requests_during_shutdown(llm):
    """Streams in flight when the server stops end (an error event or a closed
    connection), the engine thread exits, and nothing hangs."""
    server = start(llm, max_num_seqs=4).__enter__()
    engine = server.server.config.app.state.ctx.engine
    body = {**OK, "max_tokens": 250, "ignore_eos": True, "stream": True}
    ended = []

    def stream():
        try:
            with httpx.stream(
                "POST", server.url + "/v1/completions", json=body, timeout=60
            ) as resp:
                lines = list(resp.iter_lines())
                ended.append(lines[-1] if lines else "")
        except httpx.HTTPError as exc:
            ended.append(type(exc).__name__)

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: metric(server, "num_requests_running") >= 1, "a running request")
    server.__exit__(None, None, None)
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert len(ended) == 3
    assert not server.thread.is_alive()
    assert not engine._thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.post(server.url + "/v1/completions", json=OK, timeout=5)


@pytest.mark.parametrize("stream", [True, False])
def test_a_stopping_server_drains_then_ends_what_runs_with_an_error(llm, monkeypatch, stream):
    """At Ctrl-C a short request in flight completes; one still running after the drain
    ends with an OpenAI error: a stream with an error event and [DONE] (sse-starlette cut
    every stream at the signal, without [DONE]), a plain request with a JSON 503 (uvicorn's
    cancel gave a plain-text 500)."""
    import time

    from keishiki.serve import server as server_module

    monkeypatch.setattr(server_module, "DRAIN_SECONDS", 1.0)
    forward = llm._engine._forward

    def slow(*args):
        time.sleep(0.05)
        return forward(*args)

    monkeypatch.setattr(llm._engine, "_forward", slow)
    server = start(llm, max_num_seqs=4).__enter__()
    answers: dict[str, httpx.Response] = {}

    def ask(name: str, max_tokens: int) -> None:
        body = {**OK, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
        answers[name] = httpx.post(server.url + "/v1/completions", json=body, timeout=60)

    threads = [
        threading.Thread(target=ask, args=("short", 8)),
        threading.Thread(target=ask, args=("long", 200)),
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: metric(server, "num_requests_running") >= 2, "two running requests")
    server.__exit__(None, None, None)
    for thread in threads:
        thread.join(timeout=60)
    short, long = answers["short"], answers["long"]
    if stream:
        events = [line for line in long.text.splitlines() if line.startswith("data: ")]
        assert long.status_code == 200 and events[-1] == "data: [DONE]"
        error = json.loads(events[-2][6:])["error"]
        assert error["code"] == "engine_stopped" and "stopped before" in error["message"]
        assert short.text.rstrip().endswith("data: [DONE]") and '"error"' not in short.text
    else:
        assert long.status_code == 503
        assert "stopped before this request finished" in long.json()["error"]["message"]
        assert short.status_code == 200
        assert short.json()["usage"]["completion_tokens"] == 8
    assert not server.thread.is_alive()


def test_a_failing_step_fails_its_requests_only(llm, monkeypatch):
    """A forward pass that raises mid-decode ends the running requests with an OpenAI error
    (500, no traceback); the engine thread lives on and the next request completes."""
    with start(llm, max_num_seqs=2) as server:
        forward = llm._engine._forward
        calls = []

        def broken(state, *args):
            calls.append(1)
            if state is not None and len(calls) == 3:  # a decode step, not the prefill
                raise RuntimeError("boom\nTraceback: secret details")
            return forward(state, *args)

        monkeypatch.setattr(llm._engine, "_forward", broken)
        out = _post(server, "/v1/completions", {**OK, "max_tokens": 8, "ignore_eos": True})
        error = _assert_error(out, 500, "boom")
        assert error["code"] == "engine_failed" and "secret" not in error["message"]
        monkeypatch.setattr(llm._engine, "_forward", forward)
        assert httpx.get(server.url + "/health").status_code == 200
        _assert_serving(server)


def test_a_stopped_engine_refuses_at_once(llm):
    """Once the engine thread is gone, requests get 503 at once (never a wait forever)
    and /health says 503 too."""
    with start(llm, max_num_seqs=2) as server:
        engine = server.server.config.app.state.ctx.engine
        engine.stop()
        assert not engine._thread.is_alive()
        _assert_error(_post(server, "/v1/completions", OK, timeout=10), 503, "stopping")
        _assert_error(
            _post(server, "/v1/chat/completions", {**CHAT, "stream": True}, timeout=10),
            503,
            "stopping",
        )
        _assert_error(httpx.get(server.url + "/health"), 503, "stopped")
