"""A failed ONNX export prints one error line and nothing on stdout (torch's C++ logger used to
dump the whole TorchScript IR graph, ~300 lines, straight onto fd 1)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
def test_failed_export_leaves_stdout_clean(tmp_path, tiny_llama):
    pytest.importorskip("onnx")
    out = tmp_path / "onnx9"
    proc = subprocess.run([sys.executable, "-m", "keishiki", "convert", str(tiny_llama), str(out),
                           "--to", "onnx", "--opset", "9", "--exporter", "torchscript", "--json"],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "", proc.stdout[:500]
    assert proc.stderr.count("\n") == 1 and "opset 9" in proc.stderr
    assert not out.exists()
