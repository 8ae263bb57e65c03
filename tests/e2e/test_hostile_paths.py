"""CLI-level regressions for paths that are not model files: pipes, symlink loops, broken links.

Each case must be a one-line error with exit code 2, quickly (a FIFO used to block forever).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_cli


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    assert err.startswith("keishiki: error: ") and err.count("\n") == 1, err
    assert "internal error" not in err and "Traceback" not in err
    return err


@pytest.mark.timeout(20)
@pytest.mark.parametrize("command", ["info", "tensors"])
def test_fifo_is_refused_not_read(tmp_path, command):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    err = _one_line_error(*run_cli(command, fifo))
    assert "not a regular file" in err


@pytest.mark.timeout(20)
def test_fifo_config_json_in_folder_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    code, out, err = run_cli("info", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "internal error" not in err


def test_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert "symbolic link loop" in _one_line_error(*run_cli("info", tmp_path / "a"))


def test_broken_symlink_names_its_target(tmp_path):
    (tmp_path / "m.pt").symlink_to(tmp_path / "gone.pt")
    err = _one_line_error(*run_cli("info", "--json", tmp_path / "m.pt"))
    assert "broken symbolic link" in err and "gone.pt" in err


def test_missing_path(tmp_path):
    assert "no such file" in _one_line_error(*run_cli("tensors", tmp_path / "nope.gguf"))
