"""Fixtures: the malicious and benign samples of :mod:`tests.scan.samples`, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from .samples import benign, malicious


@pytest.fixture(scope="session")
def marker(tmp_path_factory) -> Path:
    """The file any live payload would create; it must never appear."""
    return tmp_path_factory.mktemp("marker") / "PWNED"


@pytest.fixture(scope="session")
def malicious_samples(tmp_path_factory, marker):
    pytest.importorskip("torch")
    return {s.name: s for s in malicious(tmp_path_factory.mktemp("malicious"), marker)}


@pytest.fixture(scope="session")
def benign_samples(tmp_path_factory):
    pytest.importorskip("torch")
    return {s.name: s for s in benign(tmp_path_factory.mktemp("benign"))}
