"""Human output of info/tensors: text from the file is printed as text, and lines are not
folded when stdout is a pipe."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_cli

LONG = "model.encoder.layers.11.self_attention.query_key_value_projection_with_a_long_suffix.weight"


@pytest.fixture()
def markup_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "markup.safetensors"
    save_file(
        {
            "a[/b]": np.zeros(1, np.float32),
            "[red]x[/red]": np.zeros(1, np.float32),
            LONG: np.zeros(3, np.float32),
        },
        str(path),
        metadata={"note": "[/oops] [bold]hi"},
    )
    return path


def test_info_prints_markup_like_metadata_verbatim(markup_file):
    code, out, err = run_cli("info", markup_file)
    assert code == 0, err
    assert "[/oops] [bold]hi" in out


def test_tensors_prints_markup_like_names_verbatim(markup_file):
    code, out, err = run_cli("tensors", markup_file)
    assert code == 0, err
    assert "a[/b]" in out and "[red]x[/red]" in out and "[3]" in out


def test_piped_tensors_keep_long_names_on_one_line(markup_file):
    # the real situation: `keishiki tensors m | grep ...` from a shell (COLUMNS not exported)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    for command in ("tensors", "info"):
        proc = subprocess.run(
            [sys.executable, "-m", "keishiki", command, str(markup_file)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        wanted = LONG if command == "tensors" else str(markup_file)
        assert any(wanted in line for line in proc.stdout.splitlines()), proc.stdout
        assert "\x1b[" not in proc.stdout  # no colour codes in a pipe


def test_rules_in_a_pipe_stay_readable():
    # `keishiki demo | less` prints rules between sections: not 4096 characters of "─"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keishiki.cli.render import console; console.rule('keishiki info x')",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "keishiki info x" in proc.stdout and len(proc.stdout.rstrip("\n")) <= 100


@pytest.mark.parametrize("args", [["info"], ["info", "--json"], ["tensors"]])
def test_closed_pipe_is_exit_0_and_silent(markup_file, args):
    # `keishiki info m | head -1`: the reader is gone before keishiki writes; rich's default
    # is SystemExit(1), which in keishiki's exit codes means "a finding"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "keishiki", *args, str(markup_file)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_table_title_is_not_wrapped_at_the_table_width(tmp_path):
    from safetensors.numpy import save_file

    folder = tmp_path / ("a-rather-long-folder-name-" * 4)
    folder.mkdir()
    path = folder / "w.safetensors"
    save_file({"w": np.zeros(1, np.float32)}, str(path))  # a narrow table, a long title
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [sys.executable, "-m", "keishiki", "tensors", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].strip() == f"1 of 1 tensors in {path}"


def test_short_keeps_class_names_whole_and_shows_empty_keys():
    from keishiki.cli.render import short

    classes = ["qamod.Net", "torch.nn.modules.activation.ReLU", "torch.nn.modules.linear.Linear"]
    assert short(classes) == ", ".join(classes)
    assert short({"": "nn.Sequential", "0": "nn.Linear"}) == '""=nn.Sequential, 0=nn.Linear'


def test_generated_names_are_explained_in_full():
    """The meaning of onnx::Conv_N was cut to "meaning…" in the human view."""
    from tests.conftest import corpus_path

    path = corpus_path("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [sys.executable, "-m", "keishiki", "info", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("onnx::<Op>_<N>"))
    assert line.rstrip().endswith("the original parameter name is lost")
    assert "onnx::Conv_16" in line and "…" not in line
