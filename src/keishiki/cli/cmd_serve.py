"""``keishiki serve MODEL``: an OpenAI-compatible HTTP server (vLLM's flag names)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ._app import app


@app.command()
def serve(
    model: Path = typer.Argument(
        ..., metavar="MODEL", help="HF folder, ONNX file/folder, TorchScript or GGUF file."
    ),
    backend: str = typer.Option(
        "auto",
        "--backend",
        "-b",
        help="auto, torch, onnxruntime, torchscript or vllm (starts vLLM's own OpenAI server).",
    ),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on (0.0.0.0 exposes the model to the network).",
    ),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="KEISHIKI_API_KEY",
        show_envvar=True,
        help="Require Authorization: Bearer KEY on every route but /health and /metrics.",
    ),
    served_model_name: list[str] = typer.Option(
        None, "--served-model-name", help="Name(s) clients pass as model (default: MODEL)."
    ),
    chat_template: str = typer.Option(
        None, "--chat-template", help="Jinja2 chat template file (or inline template)."
    ),
    max_model_len: int = typer.Option(
        None, "--max-model-len", help="Cap on prompt + output tokens."
    ),
    max_num_seqs: int = typer.Option(
        16, "--max-num-seqs", help="Most sequences decoded in one batch."
    ),
    max_queue_len: int = typer.Option(
        64, "--max-queue-len", help="Most requests waiting for a slot; more get 503."
    ),
    max_logprobs: int = typer.Option(
        20, "--max-logprobs", help="Largest logprobs / top_logprobs a request may ask."
    ),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Folder with tokenizer.json."),
    dtype: str = typer.Option(None, "--dtype", help="auto, float32, float16, bfloat16."),
    seed: int = typer.Option(None, "--seed", help="Seed of requests that give none."),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="Load a model that scan rates dangerous or unknown, "
        "and let transformers/vLLM run the folder's own code (RUNS code from it).",
    ),
    log_level: str = typer.Option(
        "info", "--uvicorn-log-level", help="uvicorn's log level (debug shows each request)."
    ),
) -> int:
    """Serve MODEL behind OpenAI's API (/v1/completions, /v1/chat/completions, /v1/models),
    batching concurrent requests; binds 127.0.0.1 unless --host says otherwise."""
    from .._optional import require
    from ..errors import InvalidRequest
    from ..runtimes.select import choose

    if not 1 <= max_num_seqs <= 1024:
        raise InvalidRequest(f"--max-num-seqs must be between 1 and 1024, got {max_num_seqs}")
    if max_queue_len < 1:  # every request passes through the queue, however briefly
        raise InvalidRequest(f"--max-queue-len must be at least 1, got {max_queue_len}")
    if max_logprobs < 0:  # (-1 refused every request that asked for logprobs)
        raise InvalidRequest(f"--max-logprobs must be at least 0, got {max_logprobs}")
    if max_model_len is not None and max_model_len < 2:
        raise InvalidRequest(f"--max-model-len must be at least 2, got {max_model_len}")
    names = list(served_model_name or []) or [str(model)]
    if backend == "vllm" or (backend == "auto" and choose(model, "auto").backend == "vllm"):
        from ..serve.vllm import run_vllm_server

        return run_vllm_server(
            model,
            api_key,
            trust_remote_code,
            _say,
            host=host,
            port=port,
            served_model_name=list(served_model_name or []) or None,
            chat_template=chat_template,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            tokenizer=tokenizer,
            dtype=dtype,
            seed=seed,
        )
    for module in ("fastapi", "uvicorn", "sse_starlette", "prometheus_client"):
        require(module, extra="serve", purpose="serve models over HTTP")
    from ..runtimes import LLM
    from ..serve import ServeConfig, build_app
    from ..serve.app import read_chat_template
    from ..serve.server import bind, serve_forever

    template = read_chat_template(chat_template)
    sock = bind(host, port)  # before loading: a port in use fails fast
    try:
        llm = LLM(
            model=str(model),
            backend=backend,
            tokenizer=tokenizer,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_logprobs=max_logprobs,
        )
        config = ServeConfig(
            served_model_name=names,
            api_key=api_key or None,
            chat_template=template,
            max_num_seqs=max_num_seqs,
            max_queue_len=max_queue_len,
            max_logprobs=max_logprobs,
            local_only=not api_key and _loopback(host),
        )
        application = build_app(llm, config)
    except BaseException:
        sock.close()
        raise
    shown = f"[{host}]" if ":" in host else host
    _say(
        f"keishiki: serving {model} as {names[0]!r} at http://{shown}:"
        f"{sock.getsockname()[1]}/v1 ({llm.backend}: {llm.backend_reason}; up to "
        f"{application.state.ctx.engine.capacity} sequences per batch"
        f"{'; API key required' if api_key else ''})"
    )
    if not api_key and not _loopback(host):
        _say(
            f"keishiki: warning: listening on {host} without --api-key: anyone who can reach "
            f"this port can use the model"
        )
    serve_forever(application, sock, log_level)
    return 0


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False
