"""A failed ONNX export prints one error line and nothing on stdout (torch's C++ logger used to
dump the whole TorchScript IR graph, ~300 lines, straight onto file descriptor 1).

In-process with ``capfd`` (fd-level capture) rather than a subprocess: a torch-sized child
process would inflate RUSAGE_CHILDREN for later tests on the same worker.
"""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.timeout(300)
def test_failed_export_leaves_stdout_clean(tmp_path, tiny_llama, capfd):
    pytest.importorskip("onnx")
    out = tmp_path / "onnx9"
    capfd.readouterr()
    code, stdout, err = run_cli("convert", tiny_llama, out, "--to", "onnx", "--opset", "9",
                                "--exporter", "torchscript", "--json")
    native = capfd.readouterr()
    assert code == 2, err
    assert stdout == "" and "Torch IR graph" not in native.out, native.out[:500]
    assert native.out == "", native.out[:500]
    assert err.count("\n") == 1 and "opset 9" in err
    assert not out.exists()
