"""An OpenAI-compatible HTTP server over keishiki's generate API (``keishiki serve``).

>>> from keishiki import LLM
>>> from keishiki.serve import ServeConfig, build_app
>>> app = build_app(LLM(model="tiny-llama/"), ServeConfig(served_model_name=["tiny"]))

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both
streaming or not), ``GET /health``, ``GET /metrics``, ``POST /tokenize``, ``/detokenize``.
Requests are batched continuously on the torch, onnxruntime and torchscript backends
(:mod:`keishiki.runtimes.batch`); ``--backend vllm`` hands over to vLLM's own server
(:mod:`keishiki.serve.vllm`).  FastAPI, uvicorn and sse-starlette are imported only here.
"""

from __future__ import annotations

from .app import ServeConfig, build_app

__all__ = ["ServeConfig", "build_app"]
