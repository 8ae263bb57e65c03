"""cli/fast.py: a plain ``keishiki scan`` runs without typer, and says and exits exactly as
the typer command does; everything else is left to typer."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from keishiki.cli import fast
from tests.conftest import corpus_path, run_cli

TORCH = "pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder with a safe, a dangerous, an unknown-global and a damaged pickle, and a
    file whose name starts with a dash."""
    root = tmp_path_factory.mktemp("fast")
    (root / "safe.pkl").write_bytes(pickle.dumps({"a": [1, 2.0]}))
    (root / "evil.pkl").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    (root / "odd.pkl").write_bytes(b"cacme.tools\nHelper\n)R.")
    (root / "cut.pkl").write_bytes(pickle.dumps(list(range(50)))[:-9])
    (root / "-dash.pkl").write_bytes(pickle.dumps(1))
    return root


ARGVS = [
    ["scan", "{torch}"],
    ["scan", "{root}/safe.pkl"],
    ["scan", "{root}/evil.pkl"],
    ["scan", "{root}/evil.pkl", "--all"],
    ["scan", "--json", "{root}/evil.pkl"],
    ["scan", "{root}/odd.pkl"],
    ["scan", "{root}/odd.pkl", "--allow-unknown"],
    ["scan", "{root}/cut.pkl"],
    ["scan", "{root}/nothing-here.pt"],
    ["scan", "{root}", "--json", "--all", "-q"],
    ["scan", "{root}", "--quiet", "{torch}"],
    ["scan", "--allow-unknown", "--json", "--json", "{root}/safe.pkl", "{root}/odd.pkl"],
    ["scan", "--", "{root}/-dash.pkl"],
]


def _argv(template: list[str], root) -> list[str]:
    return [a.format(root=root, torch=corpus_path(TORCH)) for a in template]


@pytest.mark.parametrize("template", ARGVS, ids=" ".join)
def test_same_output_and_exit_code_as_typer(template, files, monkeypatch):
    argv = _argv(template, files)
    assert fast.plain_command(argv) is not None
    plain = run_cli(*argv)
    monkeypatch.setattr(fast, "SWITCHES", {})  # every command line to typer
    assert fast.plain_command(argv) is None
    assert plain == run_cli(*argv)
    if "--json" in argv:
        assert json.loads(plain[1])["exit_code"] == plain[0]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["scan"],
        ["scan", "--"],
        ["scan", "--help"],
        ["scan", "-h", "x.pt"],
        ["scan", "-v", "x.pt"],
        ["scan", "-qv", "x.pt"],
        ["scan", "--json=1", "x.pt"],
        ["scan", "--bogus", "x.pt"],
        ["scan", "-", "x.pt"],
        ["--version"],
        ["info", "x.pt"],
        ["scanx", "x.pt"],
    ],
)
def test_anything_else_is_typers(argv):
    assert fast.plain_command(argv) is None


def test_shell_completion_is_typers(monkeypatch):
    assert fast.plain_command(["scan", "x.pt"]) is not None
    monkeypatch.setenv("_KEISHIKI_COMPLETE", "complete_bash")
    assert fast.plain_command(["scan", "x.pt"]) is None


def test_switches_are_the_typer_commands_flags():
    """A flag added to (or renamed in) the typer command shows up here: the plain parser
    would otherwise hand it on as a path, or take a misspelling typer would refuse."""
    from keishiki.cli.app import _command, _load_commands

    _load_commands(["scan"])
    group = _command(["scan"])
    for name, switches in fast.SWITCHES.items():
        params = group.commands[name].params
        flags = {
            opt: p.name
            for p in params
            if getattr(p, "is_flag", False) and not p.count
            for opt in p.opts
        }
        assert flags == switches
        others = {p.name for p in params if not getattr(p, "is_flag", False) or p.count}
        # the path arguments, and what plain_command leaves to typer (-v, --help is eager)
        assert {p.param_type_name for p in params if p.name in others} <= {"argument", "option"}
        assert others == {"paths", "verbose"}


def test_a_plain_scan_imports_no_typer():
    """The point of cli/fast.py: start-up without typer and click."""
    path = str(corpus_path(TORCH))
    script = (
        "import io, sys, contextlib, json\nfrom keishiki.cli.app import run\n"
        f"with contextlib.redirect_stdout(io.StringIO()): code = run(['scan', {path!r}])\n"
        "print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules})]))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 0 and not {"typer", "click", "pydantic"} & set(loaded)
