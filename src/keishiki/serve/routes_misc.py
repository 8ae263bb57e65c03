"""``GET /v1/models``, ``/health``, ``/metrics`` and vLLM's ``/tokenize``, ``/detokenize``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from .protocol import DetokenizeRequest, ModelCard, ModelList, TokenizeRequest
from .shaping import check_model, render_chat

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    """The served model (one card per served name, as vLLM lists them)."""
    ctx = request.app.state.ctx
    return ModelList(data=[ModelCard(id=name, root=str(ctx.llm.model_path),
                                     max_model_len=ctx.max_model_len)
                           for name in ctx.config.served_model_name])


@router.get("/health")
async def health() -> Response:
    """200 while the server runs (vLLM's: an empty body)."""
    return Response(status_code=200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text."""
    body, content_type = request.app.state.ctx.metrics.render()
    return Response(body, media_type=content_type)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    """Token ids of a prompt, or of chat messages rendered with the chat template (vLLM's
    shape: ``count``, ``max_model_len``, ``tokens``, ``token_strs``)."""
    from .errors import APIError

    ctx = request.app.state.ctx
    check_model(ctx, body.model)
    tokenizer = ctx.llm.tokenizer
    if body.messages is not None:
        text = render_chat(ctx, body.messages, body.add_generation_prompt)
        special = bool(body.add_special_tokens)  # the template wrote them already
    elif body.prompt is not None:
        text, special = body.prompt, body.add_special_tokens is not False
    else:
        raise APIError(400, "give prompt or messages", "invalid_request")
    ids = tokenizer.encode(text, add_special_tokens=special)
    return {"count": len(ids), "max_model_len": ctx.max_model_len, "tokens": ids,
            "token_strs": None}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    """The text of token ids (``{"prompt": text}``, as vLLM)."""
    from .errors import APIError

    ctx = request.app.state.ctx
    check_model(ctx, body.model)
    vocab = ctx.llm._engine.vocab_size or ctx.llm.tokenizer.vocab_size
    bad = [t for t in body.tokens if t < 0 or t >= vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary ({vocab})",
                       "invalid_request", "tokens")
    return {"prompt": ctx.llm.tokenizer.decode(body.tokens, skip_special_tokens=False)}
