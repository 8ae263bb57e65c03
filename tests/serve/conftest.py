"""Fixtures of the server tests: the tiny Llama (torch) and its ONNX export (onnxruntime),
each served on a free loopback port for the whole module, and helpers to read /metrics."""

from __future__ import annotations

import re
import time

import pytest

# the runtime tests' fixtures: the ONNX export, the TorchScript exports, one LLM per backend
from tests.runtimes.conftest import llms, tiny_onnx, tiny_ts, tiny_ts_kv  # noqa: F401

pytest.importorskip("fastapi")
pytest.importorskip("openai")

MODEL = "tiny"


@pytest.fixture(scope="session")
def served_llms(tiny_llama, tiny_onnx) -> dict:  # noqa: F811
    """One loaded LLM per batching backend."""
    from keishiki import LLM

    return {"torch": LLM(model=tiny_llama), "onnxruntime": LLM(model=tiny_onnx)}


def start(llm, **settings):
    """A Running server over ``llm`` (use as a context manager)."""
    from keishiki.serve import ServeConfig, build_app
    from keishiki.serve.server import Running

    config = ServeConfig(served_model_name=[MODEL], **settings)
    return Running(build_app(llm, config))


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def server(request, served_llms):
    """(backend name, LLM, running server) for each backend."""
    llm = served_llms[request.param]
    with start(llm, max_num_seqs=16) as running:
        yield request.param, llm, running


def client(running, api_key: str = "none"):
    """The real openai client pointed at the server (no retries: a 503 must show)."""
    from openai import OpenAI

    return OpenAI(base_url=running.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


def metric(running, name: str, **labels) -> float:
    """The value of ``keishiki:NAME{...}`` in /metrics (0 when absent)."""
    import httpx

    text = httpx.get(running.url + "/metrics").text
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    inside = re.escape(f'model_name="{MODEL}"{extra}')
    pattern = rf"^keishiki:{re.escape(name)}\{{{inside}\}} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until true (server-side effects of a client action)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
