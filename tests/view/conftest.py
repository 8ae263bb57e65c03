"""Fixtures for the view: the compare tests' small models, a hostile file, a fake remote model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keishiki.core.model import ModelInfo
from keishiki.core.tensor import TensorInfo
from tests.compare.conftest import llama_gguf_pair, seq_files, seq_state_dict  # noqa: F401

# a tensor name a page that builds HTML from strings would run
HOSTILE = '<img src=x onerror="window.__pwned=1">&amp;"\'</td><script>window.__pwned=2</script>'


@pytest.fixture(scope="session")
def hostile_file(tmp_path_factory) -> Path:
    """A safetensors file with a hostile tensor name and hostile metadata."""
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("hostile") / "hostile.safetensors"
    save_file(
        {
            HOSTILE: np.arange(6, dtype=np.float32).reshape(2, 3),
            "ok.weight": np.ones(4, np.float32),
        },
        str(path),
        metadata={HOSTILE: HOSTILE},
    )
    return path


@pytest.fixture(scope="session")
def stats_file(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Tensors with NaN, +/-inf and zeros, one large enough to be sampled, one all NaN."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    special = rng.standard_normal(1000).astype(np.float32)
    special[[3, 50]] = np.nan
    special[7] = np.inf
    special[[8, 9, 10]] = -np.inf
    special[100:120] = 0
    arrays = {
        "special": special,
        "big": rng.standard_normal((100, 50)).astype(np.float64),
        "nan": np.full(5, np.nan, np.float32),
        "const": np.full(4, 2.5, np.float32),
        "ints": np.arange(-5, 5, dtype=np.int64),
    }
    path = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    save_file(arrays, str(path))
    return path, arrays


@pytest.fixture
def remote_model() -> ModelInfo:
    """What ``inspect("hf://...")`` gives: names and shapes from headers, no tensor loader."""
    return ModelInfo(
        path="hf://org/tiny",
        format="safetensors",
        file_size=100,
        tensors=[
            TensorInfo("0.weight", "float32", (8, 4), 128),
            TensorInfo("0.bias", "float32", (8,), 32),
        ],
    )
