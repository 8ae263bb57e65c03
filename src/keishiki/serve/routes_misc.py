"""``GET /v1/models``, ``/health``, ``/metrics`` and vLLM's ``/tokenize``, ``/detokenize``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from .protocol import DetokenizeRequest, ModelCard, ModelList, TokenizeRequest
from .shaping import check_model, check_token_ids, encode, render_chat

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    """The served model (one card per served name, as vLLM lists them)."""
    ctx = request.app.state.ctx
    return ModelList(
        data=[
            ModelCard(id=name, root=str(ctx.llm.model_path), max_model_len=ctx.max_model_len)
            for name in ctx.config.served_model_name
        ]
    )


@router.get("/health")
async def health(request: Request) -> Response:
    """200 while the server runs (vLLM's: an empty body); 503 once the engine thread has
    stopped, so a load balancer stops sending requests that would fail."""
    from .errors import error_response

    if not request.app.state.ctx.engine.alive:
        return error_response(503, "the engine has stopped", "engine_stopped")
    return Response(status_code=200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text."""
    body, content_type = request.app.state.ctx.metrics.render()
    return Response(body, media_type=content_type)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """Token ids of a prompt, or of chat messages rendered with the chat template (vLLM's
    shape: ``count``, ``max_model_len``, ``tokens``, ``token_strs``)."""
    from .errors import APIError

    ctx = request.app.state.ctx
    check_model(ctx, body.model)
    if body.messages is not None:
        text = render_chat(ctx, body.messages, body.add_generation_prompt)
        special = bool(body.add_special_tokens)  # the template wrote them already
    elif body.prompt is not None:
        text, special = body.prompt, body.add_special_tokens is not False
    else:
        raise APIError(400, "give prompt or messages", "invalid_request")
    ids = await encode(
        ctx, text, "messages" if body.messages is not None else "prompt", add_special_tokens=special
    )
    # a JSONResponse as is: FastAPI's jsonable_encoder walks a returned dict item by item,
    # over a second per million ids on the event loop; these are plain JSON values already
    return JSONResponse(
        {"count": len(ids), "max_model_len": ctx.max_model_len, "tokens": ids, "token_strs": None}
    )


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    """The text of token ids (``{"prompt": text}``, as vLLM)."""
    ctx = request.app.state.ctx
    check_model(ctx, body.model)
    check_token_ids(ctx, body.tokens, "tokens")
    return {"prompt": ctx.llm.tokenizer.decode(body.tokens, skip_special_tokens=False)}
