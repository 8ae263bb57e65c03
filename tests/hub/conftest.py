"""Fixtures for the Hub tests: a loopback fake Hub serving repositories built on the spot, and
huggingface_hub pointed at it (and at a cache in tmp_path) for this process and for CLI
subprocesses.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into
``huggingface_hub.constants`` when it is imported, and builds its resolve-URL template from
the endpoint then; in-process tests set the environment *and* those constants.  A
subprocess (``run_keishiki``) gets the environment only, as a user's shell would give it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

from . import loopback
from .fakehub import FakeHub, Repo

TINY = "keishiki-test/tiny-llama"
BOTH = "keishiki-test/both-formats"
EVIL = "keishiki-test/evil-pickle"
GATED = "keishiki-test/gated"
GGUF = "keishiki-test/tiny-gguf"


@pytest.fixture(autouse=True)
def loopback_only():
    """Every test here: a connection off 127.0.0.1 raises, and fails the test."""
    loopback.ATTEMPTS.clear()
    loopback.install()
    yield
    loopback.uninstall()
    assert loopback.ATTEMPTS == [], f"traffic off loopback: {loopback.ATTEMPTS}"


@pytest.fixture(scope="session")
def marker(tmp_path_factory) -> Path:
    """The file the malicious pickle would create if anything loaded it."""
    return tmp_path_factory.mktemp("marker") / "PWNED"


@pytest.fixture(scope="session")
def repo_files(tiny_llama, marker, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """{repo id: {path: bytes}} for every repository the fake Hub serves."""
    import torch
    from safetensors.torch import load_file

    tiny = Repo.from_folder(TINY, tiny_llama).files
    bin_path = tmp_path_factory.mktemp("both") / "pytorch_model.bin"
    torch.save(load_file(tiny_llama / "model.safetensors"), bin_path)
    both = dict(
        tiny,
        **{
            "pytorch_model.bin": bin_path.read_bytes(),
            "onnx/pytorch_model.bin": bin_path.read_bytes(),
        },
    )
    from tests.scan.samples import _payload_pickles

    evil_pickle = _payload_pickles(marker)["reduce_os_system_p4"][1]
    evil = {
        "config.json": tiny["config.json"],
        "pytorch_model.bin": evil_pickle,
        "README.md": b"# a model\n",
    }
    return {
        TINY: tiny,
        BOTH: both,
        EVIL: evil,
        GATED: dict(tiny),
        GGUF: _tiny_gguf(tmp_path_factory),
    }


def _tiny_gguf(tmp_path_factory) -> dict[str, bytes]:
    """A one-file GGUF repository (written with gguf-py: 1,000 tokens, 1 MB of F32 weights)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(256)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(1000)])
    writer.add_tensor("token_embd.weight", np.zeros((1000, 256), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tiny.gguf": path.read_bytes(), "README.md": b"# gguf\n"}


@pytest.fixture
def hub(repo_files):
    """The fake Hub, started on a free loopback port for one test and stopped after it."""
    server = FakeHub()
    for repo_id, files in repo_files.items():
        server.add(Repo(repo_id, dict(files), gated=repo_id == GATED))
    server.start()
    yield server
    server.stop()


@dataclass
class HubEnv:
    """Where huggingface_hub points during a test."""

    endpoint: str
    home: Path
    cache: Path

    def env(self, offline: bool = False) -> dict[str, str]:
        """The environment for a subprocess (what a user's shell would set)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(self.home),
            HF_HUB_CACHE=str(self.cache),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_OFFLINE="1" if offline else "0",
            PYTHONPATH=str(REPO),
        )
        return env


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch) -> HubEnv:
    """huggingface_hub (in this process) pointed at the fake Hub, with its cache in tmp_path."""
    from huggingface_hub import HfFileSystem, constants

    state = HubEnv(hub.endpoint, tmp_path / "hf-home", tmp_path / "hf-home" / "hub")
    for key, value in state.env().items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HOME", str(state.home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(state.cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(state.home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    HfFileSystem.clear_instance_cache()
    yield state
    HfFileSystem.clear_instance_cache()


@pytest.fixture
def go_offline(hub_env, monkeypatch):
    """Switch huggingface_hub to offline mode (HF_HUB_OFFLINE=1) for the rest of the test."""
    from huggingface_hub import constants

    def switch() -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    return switch


def run_keishiki(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``keishiki ARGS`` in a fresh interpreter with ``env``, behind the loopback guard."""
    code = (
        "from tests.hub import loopback; loopback.install()\n"
        "from keishiki.cli.app import main; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
