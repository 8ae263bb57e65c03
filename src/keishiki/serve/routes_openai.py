"""``POST /v1/completions`` and ``POST /v1/chat/completions``, streaming (server-sent
events ending in ``data: [DONE]``) or not."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from starlette.responses import Response

from .engine import Request as EngineRequest
from .engine import TextTracker, Update
from .errors import APIError, as_api_error, error_body
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from .shaping import (
    chat_logprobs,
    check_count,
    check_model,
    check_token_ids,
    completion_logprobs,
    encode,
    render_chat,
    sampling_params,
    sequences,
    token_text,
)

router = APIRouter()


@dataclass
class _Choice:
    """One completion put together from its updates (non-streaming answers)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, update: Update) -> None:
        self.text += update.text
        self.token_ids += update.token_ids
        self.logprobs += update.logprobs or []
        if update.finish_reason is not None:
            self.finish_reason, self.stop_reason = update.finish_reason, update.stop_reason


def _submit(ctx, seqs) -> EngineRequest:
    tokenizer = ctx.llm.tokenizer
    request = EngineRequest(
        seqs, [TextTracker(tokenizer, s.params) for s in seqs], asyncio.get_running_loop()
    )
    ctx.engine.submit(request)
    return request


async def _gather(ctx, request: EngineRequest, http: Request) -> list[_Choice] | None:
    """Wait for every completion of ``request``; None (and the request cancelled) if the
    client disconnects first."""
    choices = [_Choice() for _ in request.seqs]

    async def drain():
        async for updates in ctx.engine.updates(request):
            for update in updates:
                choices[update.index].add(update)

    task = asyncio.ensure_future(drain())
    while not task.done():
        await asyncio.wait({task}, timeout=0.25)
        if not task.done() and await http.is_disconnected():
            task.cancel()  # closes engine.updates, which cancels the request
            await asyncio.gather(task, return_exceptions=True)
            return None
    task.result()  # EngineFailed → 500
    return choices


def _usage(prompt_ids: list[list[int]], completion_tokens: int) -> dict:
    prompt = sum(len(ids) for ids in prompt_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _sse(chunks):
    """Server-sent events of the JSON chunks from ``chunks``, then ``[DONE]``; an error
    after the stream started goes out as an OpenAI error event, as vLLM does."""
    from sse_starlette import EventSourceResponse

    async def events():
        try:
            async for chunk in chunks:
                yield json.dumps(chunk, ensure_ascii=False)
        except Exception as exc:  # noqa: BLE001 - the status line is sent already
            api = as_api_error(exc)
            yield json.dumps(error_body(api.status, api.message, api.code))
        yield "[DONE]"

    return EventSourceResponse(events(), sep="\n")


# -- completions ---------------------------------------------------------------------------


def _prompt_count(prompt) -> int:
    """How many prompts the prompt field holds (a text, token ids, or a list of either)."""
    if isinstance(prompt, str) or (prompt and all(isinstance(p, int) for p in prompt)):
        return 1
    return len(prompt or ())


async def _prompt_ids(ctx, prompt) -> tuple[list[str], list[list[int]]]:
    """Texts and token ids of the prompt field's four forms."""
    tokenizer = ctx.llm.tokenizer
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", "invalid_request", "prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    texts, ids = [], []
    for item in prompt:
        if isinstance(item, str):
            if not item:
                raise APIError(400, "the prompt is empty", "invalid_request", "prompt")
            texts.append(item)
            ids.append(await encode(ctx, item, "prompt"))
        else:
            check_token_ids(ctx, item, "prompt")
            texts.append(tokenizer.decode(item, skip_special_tokens=False))
            ids.append(list(item))
    return texts, ids


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, http: Request):
    """OpenAI's completions API (vLLM's extra sampling fields in the body)."""
    ctx = http.app.state.ctx
    check_model(ctx, body.model)
    if body.suffix:
        raise APIError(400, "suffix is not supported", "invalid_request", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of other than n is not supported", "invalid_request", "best_of")
    k = body.logprobs
    params = sampling_params(
        ctx, body, body.max_tokens, k, k if body.echo and k is not None else None
    )
    check_count(ctx, params.n, _prompt_count(body.prompt))
    texts, prompt_ids = await _prompt_ids(ctx, body.prompt)
    seqs = sequences(ctx, prompt_ids, params)
    request = _submit(ctx, seqs)
    rid, created, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model or ctx.model_name
    tokenizer = ctx.llm.tokenizer

    def choice(
        index: int,
        text: str,
        tokens: list[int],
        raw: list,
        finish,
        stop,
        first: bool,
        offset: int = 0,
    ) -> dict:
        """One choice; ``offset``: the text offset of ``tokens``' first token (a stream's
        later chunks continue the text, echoed prompt included)."""
        seq = seqs[index]
        prompt = index // params.n
        logprobs = None
        if k is not None:
            logprobs = completion_logprobs(tokenizer, tokens, raw, k, offset)
            if body.echo and first:
                head = seqs[prompt * params.n].prompt_logprobs or []
                echoed = completion_logprobs(tokenizer, seq.prompt_ids, head, k, 0)
                shift = len(texts[prompt])
                logprobs = {
                    key: echoed[key]
                    + (
                        [o + shift for o in logprobs[key]]
                        if key == "text_offset"
                        else logprobs[key]
                    )
                    for key in logprobs
                }
        if body.echo and first:
            text = texts[prompt] + text
        out = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish,
            "stop_reason": stop,
        }
        if body.return_token_ids:
            out["token_ids"] = tokens
            out["prompt_token_ids"] = seq.prompt_ids if first else None
        return out

    if body.stream:

        async def chunks():
            started = [False] * len(seqs)
            # where each sequence's next token starts in its text (logprobs' text_offset)
            offsets = [len(texts[i // params.n]) if body.echo else 0 for i in range(len(seqs))]
            total = 0
            async for updates in ctx.engine.updates(request):
                for u in updates:
                    total += len(u.token_ids)
                    if not (
                        u.text
                        or u.finish_reason
                        or k is not None
                        or body.return_token_ids
                        or (body.echo and not started[u.index])
                    ):
                        continue  # tokens whose text is held back (a stop string may follow)
                    item = choice(
                        u.index,
                        u.text,
                        u.token_ids,
                        u.logprobs or [],
                        u.finish_reason,
                        u.stop_reason,
                        not started[u.index],
                        offsets[u.index] if started[u.index] else 0,
                    )
                    if k is not None:
                        offsets[u.index] += sum(len(token_text(tokenizer, t)) for t in u.token_ids)
                    started[u.index] = True
                    yield {
                        "id": rid,
                        "object": "text_completion",
                        "created": created,
                        "model": name,
                        "choices": [item],
                    }
            if body.stream_options and body.stream_options.include_usage:
                yield {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": name,
                    "choices": [],
                    "usage": _usage(prompt_ids, total),
                }

        return _sse(chunks())
    results = await _gather(ctx, request, http)
    if results is None:
        return Response(status_code=499)  # nobody is listening any more
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": name,
        "choices": [
            choice(i, c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason, True)
            for i, c in enumerate(results)
        ],
        "usage": _usage(prompt_ids, sum(len(c.token_ids) for c in results)),
    }


# -- chat ----------------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, http: Request):
    """OpenAI's chat API: the messages rendered with the chat template in jinja2's
    sandbox, then generated like a completion."""
    ctx = http.app.state.ctx
    check_model(ctx, body.model)
    tokenizer = ctx.llm.tokenizer
    text = render_chat(ctx, body.messages, body.add_generation_prompt)
    # the template wrote the special tokens itself (as transformers and vLLM encode it)
    prompt_ids = [await encode(ctx, text, "messages", add_special_tokens=False)]
    if body.top_logprobs is not None and not body.logprobs:  # (OpenAI and vLLM: a 400)
        raise APIError(
            400, "top_logprobs needs logprobs set to true", "invalid_request", "top_logprobs"
        )
    k = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    if max_tokens is None and ctx.max_model_len:  # OpenAI's default: the rest of the context
        max_tokens = max(ctx.max_model_len - len(prompt_ids[0]), 1)
    params = sampling_params(ctx, body, max_tokens, k)
    seqs = sequences(ctx, prompt_ids, params)
    request = _submit(ctx, seqs)
    rid, created, name = (
        f"chatcmpl-{uuid.uuid4().hex}",
        int(time.time()),
        body.model or ctx.model_name,
    )

    def logprobs(tokens, raw):
        return None if k is None else {"content": chat_logprobs(tokenizer, tokens, raw, k)}

    if body.stream:

        async def chunks():
            total = 0
            head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name}
            for index in range(len(seqs)):
                yield {
                    **head,
                    "choices": [
                        {
                            "index": index,
                            "logprobs": None,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
            async for updates in ctx.engine.updates(request):
                for u in updates:
                    total += len(u.token_ids)
                    if not (u.text or u.finish_reason or k is not None or body.return_token_ids):
                        continue  # tokens whose text is held back (a stop string may follow)
                    item = {
                        "index": u.index,
                        "delta": {"content": u.text} if u.text else {},
                        "logprobs": logprobs(u.token_ids, u.logprobs or []),
                        "finish_reason": u.finish_reason,
                        "stop_reason": u.stop_reason,
                    }
                    if body.return_token_ids:
                        item["token_ids"] = u.token_ids
                    yield {**head, "choices": [item]}
            if body.stream_options and body.stream_options.include_usage:
                yield {**head, "choices": [], "usage": _usage(prompt_ids, total)}

        return _sse(chunks())
    results = await _gather(ctx, request, http)
    if results is None:
        return Response(status_code=499)
    choices = []
    for index, c in enumerate(results):
        item = {
            "index": index,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": logprobs(c.token_ids, c.logprobs),
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        }
        if body.return_token_ids:
            item["token_ids"] = c.token_ids
        choices.append(item)
    out = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": name,
        "choices": choices,
        "usage": _usage(prompt_ids, sum(len(c.token_ids) for c in results)),
    }
    if body.return_token_ids:
        out["prompt_token_ids"] = prompt_ids[0]
    return out
