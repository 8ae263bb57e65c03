"""``build_app``: the FastAPI application over one loaded model."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from .engine import Engine
from .metrics import Metrics

MAX_BODY_BYTES = 4 * 2**20  # a prompt of a 128k-token context is ~0.5 MB of text


@dataclass
class ServeConfig:
    """What ``keishiki serve`` was told (vLLM's names).

    Attributes:
        served_model_name: the names requests may give as ``model`` (the first is listed);
            default: the model path.
        api_key: required as ``Authorization: Bearer`` when set.
        chat_template: a template text replacing the tokenizer's.
        max_num_seqs: most sequences decoded together.
        max_queue_len: most requests waiting for a slot before 503s.
        max_logprobs: largest ``logprobs``/``top_logprobs`` a request may ask for.
        max_body_bytes: largest request body.
        local_only: answer only requests that name this machine by a loopback name in their
            ``Host`` header (``keishiki serve`` sets it on a loopback address without an API
            key: a web page whose name an attacker rebinds to 127.0.0.1 cannot use the model).
    """

    served_model_name: list[str]
    api_key: str | None = None
    chat_template: str | None = None
    max_num_seqs: int = 16
    max_queue_len: int = 64
    max_logprobs: int = 20
    max_body_bytes: int = MAX_BODY_BYTES
    local_only: bool = False


@dataclass
class Context:
    """What the routes share: the model, its engine, the settings and the metrics."""

    llm: object
    engine: Engine
    config: ServeConfig
    metrics: Metrics

    @property
    def model_name(self) -> str:
        return self.config.served_model_name[0]

    @property
    def max_model_len(self) -> int | None:
        return self.llm._engine.max_model_len


def build_app(llm, config: ServeConfig):
    """The ASGI app serving ``llm`` (a loaded :class:`keishiki.LLM` on a loop backend);
    its engine thread starts and stops with the app's lifespan.

    Raises:
        RuntimeUnavailable: the backend runs its own scheduler (vLLM: serve it with
            ``--backend vllm``, which starts vLLM's own server).
    """
    from fastapi import FastAPI

    from . import errors, routes_misc, routes_openai
    from .guard import Guard

    metrics = Metrics(config.served_model_name[0])
    engine = Engine(llm, config.max_num_seqs, config.max_queue_len, metrics)

    @asynccontextmanager
    async def lifespan(_app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(
        title="keishiki", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.ctx = Context(llm, engine, config, metrics)
    errors.install(app)
    app.include_router(routes_openai.router)
    app.include_router(routes_misc.router)
    app.add_middleware(
        Guard,
        api_key=config.api_key,
        max_body_bytes=config.max_body_bytes,
        local_only=config.local_only,
    )
    return app


def read_chat_template(value: str | None) -> str | None:
    """``--chat-template``: a file's text, or the template itself given inline (as vLLM)."""
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if any(mark in value for mark in ("{{", "{%")):
        return value
    from ..errors import InvalidRequest

    raise InvalidRequest(
        f"{value}: no such chat template file (and not a template: no {{{{ or {{% in it)"
    )
