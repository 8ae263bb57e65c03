"""``keishiki serve --backend vllm``: hand over to vLLM's own OpenAI server (its scheduler,
paged KV cache and API are vLLM's; keishiki does not re-implement them), after keishiki's
load gate, with the flags mapped one to one (they have the same names)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .._optional import require
from ..core.children import python_module

ENTRY = "vllm.entrypoints.openai.api_server"


def vllm_command(
    model: Path,
    *,
    host: str,
    port: int,
    served_model_name: list[str] | None,
    chat_template: str | None,
    max_model_len: int | None,
    max_num_seqs: int | None,
    tokenizer: Path | None,
    dtype: str | None,
    seed: int | None,
    trust_remote_code: bool,
) -> list[str]:
    """The command line that starts vLLM's server with keishiki's settings (the API key
    goes through ``VLLM_API_KEY``, not the command line, which other users can read)."""
    argv = python_module(ENTRY, "--model", str(model), "--host", host, "--port", str(port))
    options = {
        "--served-model-name": served_model_name,
        "--chat-template": chat_template,
        "--max-model-len": max_model_len,
        "--max-num-seqs": max_num_seqs,
        "--tokenizer": tokenizer,
        "--dtype": dtype,
        "--seed": seed,
    }
    for flag, value in options.items():
        if value is None:
            continue
        argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


def run_vllm_server(
    model: Path, api_key: str | None, trust_remote_code: bool, say, **settings
) -> int:
    """Check, gate, then run vLLM's server in the foreground; returns its exit code.

    Raises:
        InvalidRequest: the path is not a Hugging Face folder vLLM can serve.
        MissingDependency: vLLM is not installed here.
        UnsafeFile: the model scans dangerous or unknown (without ``--trust-remote-code``).
    """
    from ..core.gate import admit
    from ..runtimes.select import choose

    choice = choose(model, "vllm")
    require("vllm", purpose="serve with --backend vllm (vLLM's own OpenAI server)")
    admit(choice.model_file, trust=trust_remote_code, purpose="serve")
    argv = vllm_command(choice.model_file, trust_remote_code=trust_remote_code, **settings)
    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    say(f"keishiki: --backend vllm: starting vLLM's own OpenAI server: {' '.join(argv)}")
    return subprocess.call(argv, env=env)
