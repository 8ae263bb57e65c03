"""``keishiki serve`` on the command line: it serves, refuses what it must in one line."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import run_cli

from .conftest import client


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture()
def evil_folder(tiny_llama, tmp_path):
    """The tiny Llama's folder with a pickle that would run a command when loaded."""
    folder = tmp_path / "evil"
    shutil.copytree(tiny_llama, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Evil()}))
    return folder


def test_dangerous_model_is_refused_before_loading(evil_folder):
    code, out, err = run_cli("serve", evil_folder, "--port", "0")
    assert code == 1 and out == ""
    assert err.startswith("keishiki: error: ") and err.count("\n") == 1
    assert "unsafe: not loaded to run: dangerous" in err and "--trust-remote-code" in err


def test_backend_vllm_without_vllm(tiny_llama):
    """vLLM's own server is what --backend vllm starts; without vLLM that is one line."""
    pytest.importorskip("fastapi")
    if sys.modules.get("vllm") or __import__("importlib").util.find_spec("vllm"):
        pytest.skip("vLLM is installed here")
    code, out, err = run_cli("serve", tiny_llama, "--backend", "vllm", "--port", "0")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "vllm is needed to serve with --backend vllm" in err


def test_vllm_command_maps_the_flags(tmp_path):
    from keishiki.serve.vllm import ENTRY, vllm_command

    argv = vllm_command(
        tmp_path,
        host="127.0.0.1",
        port=8001,
        served_model_name=["a", "b"],
        chat_template="t.jinja",
        max_model_len=512,
        max_num_seqs=8,
        tokenizer=None,
        dtype=None,
        seed=3,
        trust_remote_code=True,
    )
    assert argv[1:4] == ["-P", "-m", ENTRY]  # -P: nothing imported from the working folder
    assert " ".join(argv[4:]) == (
        f"--model {tmp_path} --host 127.0.0.1 --port 8001 "
        "--served-model-name a b --chat-template t.jinja "
        "--max-model-len 512 --max-num-seqs 8 --seed 3 "
        "--trust-remote-code"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-num-seqs", "0"], "--max-num-seqs must be between 1 and 1024"),
        (["--max-model-len", "1"], "--max-model-len must be at least 2"),
        (["--max-queue-len", "0"], "--max-queue-len must be at least 1"),
        (["--max-logprobs", "-1"], "--max-logprobs must be at least 0, got -1"),
        (["--chat-template", "no-such-file.jinja"], "no such chat template file"),
        (["--backend", "onnxruntime"], "backend 'onnxruntime' runs onnx models"),
    ],
)
def test_bad_arguments(tiny_llama, args, message):
    code, _out, err = run_cli("serve", tiny_llama, "--port", "0", *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_port_in_use(tiny_llama):
    from keishiki.serve.server import bind

    taken = bind("127.0.0.1", 0)
    try:
        code, _out, err = run_cli("serve", tiny_llama, "--port", str(taken.getsockname()[1]))
    finally:
        taken.close()
    assert code == 2 and "cannot listen on 127.0.0.1:" in err and err.count("\n") == 1


@pytest.mark.slow
def test_serve_command_end_to_end(tiny_onnx):
    """The real command in its own process: the line it prints names the port; the real
    client talks to it; Ctrl-C ends it with exit 0."""
    env = dict(os.environ, KEISHIKI_API_KEY="k3y")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keishiki",
            "serve",
            str(tiny_onnx),
            "--port",
            "0",
            "--served-model-name",
            "tiny",
            "--uvicorn-log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stderr.readline()
        found = re.search(
            r"at (http://127\.0\.0\.1:\d+)/v1 \(onnxruntime: .*API key required", line
        )
        assert found, line

        class Running:  # the line is printed once the model is loaded: it is serving
            pass

        running = Running()
        running.url = found.group(1)
        out = client(running, "k3y").completions.create(
            model="tiny", prompt="Hi", max_tokens=3, temperature=0
        )
        assert out.usage.completion_tokens >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        proc.stderr.close()


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_which_hosts_warn_without_an_api_key(host, loopback):
    """Listening beyond loopback without --api-key prints a warning line at start."""
    from keishiki.cli.cmd_serve import _loopback

    assert _loopback(host) is loopback
