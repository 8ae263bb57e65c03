"""A killed convert leaves nothing under the output name, and the next run cleans up after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import run_cli


def test_killed_convert_leaves_no_output_and_next_run_sweeps_its_temporary(tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "w.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32)}, str(src))
    out = tmp_path / "out.safetensors"
    # a temporary as a SIGKILLed run leaves it: a real, dead pid
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    stale = tmp_path / f".out.safetensors.keishiki-tmp-{dead.pid}"
    stale.write_bytes(b"half-written")
    # a live process's temporary is not touched
    live = tmp_path / f".out.safetensors.keishiki-tmp-{os.getppid()}"
    live.write_bytes(b"someone else's")

    code, _, err = run_cli("convert", src, out, "--to", "safetensors", "-q")
    assert code == 0, err
    assert out.exists() and not stale.exists() and live.exists()


def test_sigkill_mid_convert_never_leaves_the_output_name(tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "big.safetensors"  # ~64 MB: the convert takes long enough to be killed
    save_file(
        {f"w{i}": np.random.default_rng(i).random(2_000_000, dtype=np.float32) for i in range(8)},
        str(src),
    )
    out = tmp_path / "out.safetensors"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keishiki",
            "convert",
            str(src),
            str(out),
            "--to",
            "safetensors",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the writer's lock file may stay behind a SIGKILL (the kernel released the lock itself)
    others = {p.name for p in tmp_path.iterdir()} - {
        "big.safetensors",
        ".out.safetensors.keishiki-lock",
    }
    if not out.exists():  # killed before the rename (the usual case): nothing under the name
        assert all(name.startswith(".out.safetensors.keishiki-tmp-") for name in others)
    else:  # finished in time: then it is complete
        assert out.stat().st_size > src.stat().st_size // 2
    # the next run to the same output is not locked out, and clears every leftover
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "keishiki",
            "convert",
            str(src),
            str(out),
            "--to",
            "safetensors",
            "-q",
            "--force",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors", "out.safetensors"]
