"""``keishiki scan``'s exit code is the verdict's whatever happens to its output: a stderr
or stdout that is gone, an encoding that cannot show a name, a name that is not UTF-8;
Ctrl-C is 130 and one line on both ways of running it (cli/fast.py and typer)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

from keishiki.cli import fast, scanning
from keishiki.cli.app import run
from tests.conftest import run_cli

EVIL = b"cos\nsystem\n(S'true'\ntR."


@pytest.fixture()
def mixed(tmp_path):
    """A folder with a dangerous pickle and a damaged one (an error line on stderr)."""
    (tmp_path / "evil.pkl").write_bytes(EVIL)
    (tmp_path / "cut.pkl").write_bytes(b"\x80\x04\x95\x10\x00\x00\x00")
    return tmp_path


class _Gone(io.StringIO):
    """A stream whose reader has gone: every write is EPIPE."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("plain", [True, False], ids=["fast", "typer"])
def test_a_stderr_that_is_gone_keeps_the_verdict(mixed, plain, monkeypatch):
    if not plain:
        monkeypatch.setattr(fast, "SWITCHES", {})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(_Gone()):
        assert run(["scan", str(mixed)]) == 1


def test_error_lines_still_reach_stderr_when_stdout_is_gone(mixed):
    err = io.StringIO()
    with contextlib.redirect_stdout(_Gone()), contextlib.redirect_stderr(err):
        assert run(["scan", str(mixed)]) == 1
    assert "cut.pkl" in err.getvalue() and "error" in err.getvalue()


@pytest.mark.parametrize("plain", [True, False], ids=["fast", "typer"])
def test_ctrl_c_is_130_and_said_once(mixed, plain, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scanning, "scan_with_bar", interrupted)
    if not plain:
        monkeypatch.setattr(fast, "SWITCHES", {})
    assert run_cli("scan", str(mixed)) == (130, "", "keishiki: error: interrupted\n")


def test_ctrl_c_inside_a_reading_is_not_a_buffer_error(tmp_path, monkeypatch):
    """The interrupt's traceback holds slices of the file's map: closing it then must not
    turn Ctrl-C into ``BufferError: cannot close exported pointers exist``."""
    from keishiki._scan import scanner

    def interrupted(ctx, path, view, fh, explicit):
        held = view[0:4]  # noqa: F841 - what a frame of the reading holds when Ctrl-C comes
        raise KeyboardInterrupt

    (tmp_path / "m.pkl").write_bytes(EVIL)
    monkeypatch.setattr(scanner, "_scan_top", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scanner.scan_file(tmp_path / "m.pkl")


def test_a_name_that_is_not_utf8_is_shown_by_its_bytes(tmp_path, monkeypatch):
    from keishiki.cli import render

    monkeypatch.setattr(render.console, "width", 4096)  # one line per row (COLUMNS may be set)
    name = os.fsdecode(b"bad\xff.pkl")
    (tmp_path / name).write_bytes(EVIL)
    code, out, _ = run_cli("scan", str(tmp_path))
    assert code == 1 and "bad\\xff.pkl" in out
    code, out, _ = run_cli("scan", "--json", str(tmp_path))
    assert code == 1 and json.loads(out)["files"][0]["path"].endswith(name)


@pytest.mark.parametrize(
    "shell, code",
    [
        ("keishiki scan {p} >&-", 1),  # stdout closed at start
        ("PYTHONIOENCODING=ascii keishiki scan {p}", 1),  # an encoding without the name
    ],
)
def test_output_that_cannot_be_written_keeps_the_verdict(shell, code, tmp_path):
    (tmp_path / "モデル.pkl").write_bytes(EVIL)
    exe = os.path.join(os.path.dirname(sys.executable), "keishiki")
    if not os.path.exists(exe):
        pytest.skip("the keishiki script is not installed beside this interpreter")
    proc = subprocess.run(
        ["bash", "-c", shell.replace("keishiki", exe, 1).format(p=tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr


def test_an_empty_path_is_no_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(EVIL)  # what scanning "." would find
    code, out, err = run_cli("scan", "")
    assert (code, out) == (2, "") and "empty path" in err


def test_a_global_no_encoding_can_write_keeps_the_report(tmp_path):
    """A pickle naming ``os.<U+D800>`` (bytes ED A0 80, read leniently): the report of the
    whole folder still prints, the name spelled out, on a pipe and as JSON."""
    name = "\ud800".encode("utf-8", "surrogatepass")
    (tmp_path / "a.pkl").write_bytes(
        b"\x80\x04\x8c\x02os\x8c" + bytes([len(name)]) + name + b"\x93)R."
    )
    (tmp_path / "b.pkl").write_bytes(EVIL)
    exe = os.path.join(os.path.dirname(sys.executable), "keishiki")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    done = subprocess.run([exe, "scan", str(tmp_path)], capture_output=True, env=env)
    out = done.stdout.decode()
    assert done.returncode == 1 and "os.\\ud800" in out and "b.pkl" in out, done.stderr
    done = subprocess.run([exe, "scan", "--json", str(tmp_path)], capture_output=True, env=env)
    found = [f["global"] for fr in json.loads(done.stdout)["files"] for f in fr["findings"]]
    assert done.returncode == 1 and "os.\ud800" in found, done.stderr
