"""A failed ONNX export prints one error line and nothing on stdout (torch's C++ logger used to
dump the whole TorchScript IR graph, ~300 lines, straight onto file descriptor 1).

A subprocess, so stdout is a real file descriptor, and so torch's export does not grow the
pytest worker (a child's ru_maxrss starts at its parent's on Linux).
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def llama_built_elsewhere(tmp_path_factory):
    """The tiny Llama built in a child process: the session fixture would load torch into
    this worker, and every later child (e.g. the scan RSS test's) inherits its ru_maxrss."""
    path = tmp_path_factory.mktemp("qa-llama") / "tl"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from keishiki.examples import "
            "build_tiny_llama; build_tiny_llama(sys.argv[1])",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=280,
    )
    return path


@pytest.mark.timeout(600)
def test_failed_export_leaves_stdout_clean(tmp_path, llama_built_elsewhere):
    pytest.importorskip("onnx")
    out = tmp_path / "onnx9"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keishiki",
            "convert",
            str(llama_built_elsewhere),
            str(out),
            "--to",
            "onnx",
            "--opset",
            "9",
            "--exporter",
            "torchscript",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "", proc.stdout[:500]
    assert proc.stderr.count("\n") == 1 and "opset 9" in proc.stderr
    assert not out.exists()
