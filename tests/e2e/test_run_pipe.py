"""`keishiki run … | head` ends quietly with exit 0 (a closed pipe is not a finding)."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_run_into_closed_pipe_exits_0(tiny_llama):
    cmd = (
        f"{sys.executable} -m keishiki run {tiny_llama} -p hello --max-tokens 64 "
        f'--temperature 0 --backend torch | head -c 1 > /dev/null; echo "rc=${{PIPESTATUS[0]}}"'
    )
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert "rc=0" in out.stdout, out.stderr[-500:]
