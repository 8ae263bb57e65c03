"""CLI conventions (issue 14): -q/-v on every command, several paths, choices in --help,
typer's shell completion, a progress bar on a folder scan."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from tests.conftest import corpus_path, run_cli

SMALL = corpus_path("safetensors/safetensors-samples/overall.safetensors")
TORCH = corpus_path("pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt")


def _group():
    from keishiki.cli.app import _command, _load_commands

    _load_commands()
    return _command()


def _options(command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def test_every_command_takes_quiet_and_verbose():
    group = _group()
    assert len(group.commands) >= 14
    for name, command in group.commands.items():
        assert {"-q", "--quiet", "-v", "--verbose"} <= _options(command), name
        declared = [opt for p in command.params for opt in (*p.opts, *p.secondary_opts)]
        assert len(declared) == len(set(declared)), name  # no command's own -q or -v


@pytest.mark.parametrize(
    "command, option, module, names",
    [
        ("convert", "--to", "keishiki._convert.base", "TARGETS"),
        ("convert", "--dtype", "keishiki._convert.base", "DTYPES"),
        ("convert", "--quant", "keishiki._convert.base", "GGUF_QUANTS"),
        ("convert", "--quant", "keishiki._convert.base", "ONNX_QUANTS"),
        ("convert", "--method", "keishiki._convert.torchscript_export", "METHODS"),
        ("run", "--backend", "keishiki.runtimes.select", "BACKENDS"),
        ("serve", "--backend", "keishiki.runtimes.select", "BACKENDS"),
        ("bench", "--backends", "keishiki.runtimes.select", "BACKENDS"),
    ],
)
def test_help_lists_every_choice(command, option, module, names):
    """The help of each option with a fixed set of values names all of them (the library's
    own tuple is the truth; ``auto`` is no choice for bench, which runs each it is given)."""
    import importlib
    import re

    choices = set(getattr(importlib.import_module(module), names))
    if command == "bench":
        choices.discard("auto")
    (param,) = [p for p in _group().commands[command].params if option in p.opts]
    words = set(re.findall(r"[\w-]+", param.help))
    assert choices <= words, sorted(choices - words)


def test_quiet_and_verbose_set_the_keishiki_log_for_one_command(capsys):
    from keishiki.cli.output import OUTPUT, output

    log = logging.getLogger("keishiki.test")
    level = logging.getLogger("keishiki").level
    with output(quiet=False, verbose=1):
        log.info("step one")
        log.debug("not at -v")
        assert OUTPUT.verbose == 1
    with output(quiet=False, verbose=2):
        log.debug("detail")
    with output(quiet=True, verbose=2):  # quiet wins
        log.warning("hidden")
        assert OUTPUT.quiet and OUTPUT.verbose == 0
    err = capsys.readouterr().err
    assert "keishiki: step one\n" in err and "not at -v" not in err
    assert "keishiki: keishiki.test: detail\n" in err and "hidden" not in err
    assert logging.getLogger("keishiki").level == level and not OUTPUT.quiet


def test_quiet_drops_the_hub_notice(monkeypatch, capsys):
    from keishiki.cli import args
    from keishiki.cli.output import output

    with output(quiet=True, verbose=0):
        args._notice("pulling hf://org/name")
    assert capsys.readouterr().err == ""
    args._notice("pulling hf://org/name")
    assert capsys.readouterr().err == "keishiki: pulling hf://org/name\n"


def test_quiet_keeps_the_result():
    code, out, err = run_cli("info", SMALL, "-q")
    assert code == 0 and "safetensors" in out and err == ""
    code, out, _ = run_cli("tensors", "-v", SMALL, "--json")
    assert code == 0 and json.loads(out)["schema"] == "keishiki.tensors/1"


def test_info_of_several_paths_reports_each():
    code, out, err = run_cli("info", SMALL, TORCH)
    assert (code, err) == (0, "")
    # (paths may be folded where COLUMNS is set: the formats say which report is which)
    assert out.index("safetensors") < out.index("pytorch (zip)")


def test_several_paths_exit_with_the_worst_and_go_on_after_an_error(tmp_path):
    missing = tmp_path / "nothing.safetensors"
    code, out, err = run_cli("info", missing, SMALL)
    assert code == 2 and "safetensors" in out
    assert err == f"keishiki: error: {missing}: no such file or folder\n"


@pytest.mark.parametrize("command", ["info", "tensors"])
def test_json_of_several_paths_is_one_object_holding_a_list(command, tmp_path):
    missing = tmp_path / "nothing.pt"
    code, out, _ = run_cli(command, SMALL, missing, TORCH, "--json")
    data = json.loads(out)
    assert code == 2 and data["schema"] == f"keishiki.{command}-list/1"
    assert data["exit_code"] == 2 and len(data["reports"]) == 3
    first, error, last = data["reports"]
    single = json.loads(run_cli(command, SMALL, "--json")[1])
    assert first == single  # each report is the one-path document, schema included
    assert error == {
        "path": str(missing),
        "error": f"{missing}: no such file or folder",
        "exit_code": 2,
    }
    assert last["schema"] == f"keishiki.{command}/1" and last["format"] == "pytorch"


def test_one_path_json_is_unchanged():
    code, out, _ = run_cli("info", SMALL, "--json")
    assert code == 0 and json.loads(out)["schema"] == "keishiki.info/1"


def test_one_missing_path_is_the_one_line_error():
    code, out, err = run_cli("tensors", "no/such.safetensors")
    assert (code, out, err) == (
        2,
        "",
        "keishiki: error: no/such.safetensors: no such file or folder\n",
    )


def test_show_completion_is_typers(monkeypatch):
    import typer.completion

    # typer detects the shell from the process tree: under `make` that is /bin/sh, which it
    # has no script for; the user's interactive bash is what this stands for
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    code, out, _ = run_cli("--show-completion")
    assert code == 0 and "_KEISHIKI_COMPLETE=complete_bash" in out
    assert {"--install-completion", "--show-completion"} <= _options(_group())


@pytest.mark.parametrize(
    "words, cword, expected",
    [
        ("keishiki in", 1, "info"),
        ("keishiki info --js", 2, "--json"),
        ("keishiki scan --allow", 2, "--allow-unknown"),
    ],
)
def test_completion_completes_commands_and_options(words, cword, expected):
    env = dict(
        os.environ, COMP_WORDS=words, COMP_CWORD=str(cword), _KEISHIKI_COMPLETE="complete_bash"
    )
    out = subprocess.run(
        [sys.executable, "-m", "keishiki.cli.app"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.split() == [expected], out


def test_scan_of_a_folder_advances_a_bar_per_file(tmp_path, monkeypatch):
    """On a terminal, ``scan`` shows a bar whose total is the number of files."""
    import contextlib

    import keishiki.core.progress
    from keishiki.cli import scanning

    for n in range(5):
        (tmp_path / f"f{n}.bin").write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.bin").write_bytes(b"\x80\x04K\x02.")
    seen = []

    @contextlib.contextmanager
    def recorder(total, description, quiet=False, unit_bytes=False):
        seen.append((total, description, quiet))
        yield (lambda n=1, description=None: None) if quiet else (lambda n=1, **_: seen.append(n))

    monkeypatch.setattr(keishiki.core.progress, "progress", recorder)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    report = scanning.scan_with_bar([str(tmp_path)], quiet=False)
    assert len(report.files) == 6 and seen == [(6, "scanning", False)] + [1] * 6
    seen.clear()
    report = scanning.scan_with_bar([str(tmp_path)], quiet=True)  # -q, --json: no bar, no count
    assert seen == [] and len(report.files) == 6


def test_bad_numbers_are_usage_errors():
    code, _, err = run_cli("run", "m", "--max-tokens", "abc")
    assert code == 2 and "'abc' is not a valid integer." in err
    code, _, err = run_cli("run", "m", "--top-p", "x")
    assert code == 2 and "'x' is not a valid number." in err


def test_help_shows_text_that_looks_like_markup_as_written():
    code, out, _ = run_cli("info", "--help")
    assert code == 0 and "hf://ORG/NAME[@REV]" in out


def test_verbose_says_how_long_the_command_took():
    import re

    code, out, err = run_cli("info", SMALL, "-v")
    assert code == 0 and "safetensors" in out
    assert re.fullmatch(r"keishiki: info took \d+\.\d\d s\n", err), err
    code, _, err = run_cli("tensors", SMALL, "-vv", "--json")
    assert code == 0 and re.fullmatch(r"keishiki: keishiki\.cli: tensors took \d+\.\d\d s\n", err)


def test_help_text_is_reflowed_and_escaped_as_markdown_showed_it():
    from keishiki.cli._startup import _reflow

    assert _reflow("Read a\nfile `keishiki info` [@REV]\n\nNext.") == (
        "Read a file [markdown.code]keishiki info[/] \\[@REV]\n\nNext."
    )


def test_quiet_silences_python_warnings_for_the_command_only():
    import warnings

    from keishiki.cli.output import output

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with output(quiet=True, verbose=0):
            warnings.warn("from a library", UserWarning, stacklevel=1)
        warnings.warn("after the command", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["after the command"]


@pytest.mark.parametrize("rich_help", ["1", "0"])
def test_flags_show_no_value_in_help(rich_help):
    """A flag takes no value, so its help shows none (typer shows ``--json <bool>``, which
    reads as ``--json true``); options that take one still show their type.  In a child
    process: typer reads TYPER_USE_RICH (rich panels or click's plain help) on import."""
    import re

    env = {**os.environ, "TYPER_USE_RICH": rich_help, "COLUMNS": "100"}
    for argv in (["--help"], ["info", "--help"], ["scan", "--help"], ["convert", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "keishiki", *argv], env=env, capture_output=True, text=True
        )
        out = done.stdout
        assert done.returncode == 0 and ("╭" in out) == (rich_help == "1"), argv
        flags = re.findall(r"(--(?:json|help|quiet|verbose|version|force)\b)[ ,│-]*(\S*)", out)
        assert flags, argv
        assert not [f for f in flags if f[1].startswith("<")], (argv, flags)
        if argv[0] == "convert":
            assert re.search(r"--block-size\s+<int>", out) and re.search(r"--to\s+<str>", out)
