"""Between OpenAI's request bodies and keishiki's generate API: sampling settings, prompt
checks against the context length and the batch size, chat rendering, and the logprobs
shapes of the two APIs."""

from __future__ import annotations

from ..errors import InvalidRequest
from ..runtimes.params import SamplingParams
from .errors import APIError


def check_model(ctx, name: str | None) -> None:
    """404 unless ``name`` is a served name (or absent, as vLLM allows)."""
    if name is not None and name not in ctx.config.served_model_name:
        raise APIError(404, f"The model `{name}` does not exist.", "model_not_found", "model")


async def encode(ctx, text: str, param: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text``, refusing what is no Unicode text, tokenized off the event loop.

    JSON may escape a lone surrogate (``"\\ud800"``) and Python's json decodes it into a
    ``str`` that has no UTF-8 form; the tokenizers library then raises a TypeError, which
    would be a 500.  It is the request's fault, so a 400.

    A body at the size limit is megabytes of text, seconds of tokenizing: that runs on a
    worker thread, through ``encode_batch``, which (unlike ``encode``) releases the GIL, so
    the server keeps answering other requests meanwhile (vLLM tokenizes off the loop too).

    Raises:
        APIError: ``text`` holds a lone surrogate.
    """
    from starlette.concurrency import run_in_threadpool

    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(
            400,
            f"{param} is not valid Unicode text: a lone surrogate "
            f"(\\u{ord(exc.object[exc.start]):04x}) at position {exc.start}",
            "invalid_request",
            param,
        ) from None
    # Tokenizer.encode's own call, ids for ids (the tokenizers.Tokenizer it wraps)
    encoded = await run_in_threadpool(
        ctx.llm.tokenizer._tok.encode_batch, [text], add_special_tokens=add_special_tokens
    )
    return list(encoded[0].ids)


def check_token_ids(ctx, ids: list[int], param: str) -> None:
    """400 unless every id is in the vocabulary.  Checked before anything decodes them: the
    tokenizer raises OverflowError on ids past 64 bits or below 0."""
    vocab = ctx.llm._engine.vocab_size or ctx.llm.tokenizer.vocab_size
    bad = [t for t in ids if t < 0 or t >= vocab]
    if bad:
        raise APIError(
            400,
            f"token id {bad[0]} is outside the model's vocabulary ({vocab})",
            "invalid_request",
            param,
        )


def render_chat(ctx, messages, add_generation_prompt: bool = True) -> str:
    """The prompt text of a conversation, through the chat template in jinja2's sandbox
    (``Tokenizer.render_chat``).  Content given as parts keeps its text parts, joined by
    newlines (vLLM's "string" content format)."""
    plain = []
    for message in messages:
        item = message.model_dump(exclude_none=True)
        content = item.get("content", "")
        if isinstance(content, list):
            texts = [p.get("text") for p in content if p.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise APIError(
                    400, "only text content parts are supported", "invalid_request", "messages"
                )
            content = "\n".join(texts)
        item["content"] = content
        plain.append(item)
    return ctx.llm.tokenizer.render_chat(plain, add_generation_prompt, ctx.config.chat_template)


def sampling_params(
    ctx, body, max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None = None
) -> SamplingParams:
    """SamplingParams of a request body, checked (400 with vLLM's message if not).

    Raises:
        APIError: an out-of-range or unsupported field.
    """
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", "invalid_request", "logit_bias")
    for asked in (logprobs, prompt_logprobs):
        if asked is not None and asked > ctx.config.max_logprobs:
            raise APIError(
                400,
                f"requested {asked} logprobs, more than the maximum allowed "
                f"({ctx.config.max_logprobs}, --max-logprobs)",
                "invalid_request",
                "logprobs",
            )
    params = SamplingParams(
        n=body.n,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=0 if body.top_k is None else body.top_k,
        min_p=0.0 if body.min_p is None else body.min_p,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        seed=body.seed,
        max_tokens=max_tokens,
        stop=body.stop,
        stop_token_ids=body.stop_token_ids,
        ignore_eos=body.ignore_eos,
        skip_special_tokens=body.skip_special_tokens,
        include_stop_str_in_output=body.include_stop_str_in_output,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )
    try:
        return params.validate()
    except InvalidRequest as exc:
        raise APIError(400, str(exc), "invalid_request") from None


def check_count(ctx, n: int, n_prompts: int) -> None:
    """Refuse ``n`` × ``n_prompts`` sequences beyond ``--max-num-seqs``: before anything is
    tokenized (200,000 one-character prompts took 25 s of the server's CPU to refuse)."""
    capacity = ctx.engine.capacity
    if n * n_prompts > capacity and not ctx.engine.batch.backend.batchable:
        raise APIError(
            400,
            f"this model decodes one sequence at a time (its graph takes no attention mask): "
            f"n × prompts must be 1, got {n} × {n_prompts}",
            "invalid_request",
            "n",
        )
    if n * n_prompts > capacity:
        raise APIError(
            400,
            f"n × prompts must be at most {capacity} (--max-num-seqs), got {n} × {n_prompts}",
            "invalid_request",
            "n",
        )


def sequences(ctx, prompt_ids: list[list[int]], params: SamplingParams) -> list:
    """The sequences of ``prompt_ids`` × ``n``, after the bounds: ``n`` times the prompts
    within ``--max-num-seqs``, each prompt and its ``max_tokens`` within the context.

    Raises:
        APIError: a bound is passed (vLLM's wording for the context).
    """
    check_count(ctx, params.n, len(prompt_ids))
    limit = ctx.max_model_len
    for ids in prompt_ids:
        if not ids:
            raise APIError(400, "the prompt is empty", "invalid_request", "prompt")
        wanted = len(ids) + (params.max_tokens or 0)
        if limit and (len(ids) >= limit or wanted > limit):
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens. "
                f"However, you requested {wanted} tokens ({len(ids)} in the "
                f"prompt, {params.max_tokens or 0} for the completion). Please "
                f"reduce the length of the prompt or completion.",
                "invalid_request",
                "max_tokens",
            )
    try:
        return ctx.llm._sequences(prompt_ids, [params] * len(prompt_ids))
    except InvalidRequest as exc:
        raise APIError(400, str(exc), "invalid_request") from None


def token_text(tokenizer, token: int) -> str:
    """One token alone, decoded (special tokens kept: they are what was sampled)."""
    return tokenizer.decode([token], False)


def completion_logprobs(tokenizer, tokens: list[int], raw: list, k: int, offset: int) -> dict:
    """The completions API's logprobs of ``tokens``: parallel lists, ``top_logprobs`` the
    ``k`` most likely tokens by text and the chosen one (OpenAI: "up to logprobs+1
    elements", as vLLM gives them); ``offset`` is the text offset of the first token.
    A ``None`` in ``raw`` (the first prompt token) has no log-probability."""
    out = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for token, step in zip(tokens, raw):
        text = token_text(tokenizer, token)
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        if step is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(step[token][0])
        best = sorted(step.items(), key=lambda item: item[1][1])[:k] if k else []
        if all(t != token for t, _ in best):
            best.append((token, step[token]))
        out["top_logprobs"].append({token_text(tokenizer, t): lp for t, (lp, _) in best})
    return out


def chat_logprobs(tokenizer, tokens: list[int], raw: list, k: int) -> list[dict]:
    """The chat API's ``logprobs.content``: per token its text, log-probability, UTF-8
    bytes and the ``k`` most likely alternatives."""
    content = []
    for token, step in zip(tokens, raw):
        text = token_text(tokenizer, token)
        best = [
            item for item in sorted(step.items(), key=lambda item: item[1][1]) if item[1][1] <= k
        ][:k]
        content.append(
            {
                "token": text,
                "logprob": step[token][0],
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {
                        "token": token_text(tokenizer, t),
                        "logprob": lp,
                        "bytes": list(token_text(tokenizer, t).encode("utf-8")),
                    }
                    for t, (lp, _) in best
                ],
            }
        )
    return content
