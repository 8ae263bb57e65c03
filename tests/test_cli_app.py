"""The CLI's error contract: usage errors are click's message and exit 2, never 'internal error'."""

from tests.conftest import run_cli


def test_unknown_command_is_a_usage_error():
    code, _, err = run_cli("nosuch")
    assert code == 2 and "No such command 'nosuch'" in err and "internal error" not in err


def test_missing_argument_and_bad_option():
    code, _, err = run_cli("info")
    assert code == 2 and "Missing argument" in err and "internal error" not in err
    code, _, err = run_cli("info", "--bogus", "x")
    assert code == 2 and "No such option: --bogus" in err


def test_help_exits_0():
    code, out, _ = run_cli("--help")
    assert code == 0 and "info" in out and "convert" in out


def test_version_is_the_package_version():
    from importlib.metadata import version

    code, out, err = run_cli("--version")
    assert (code, out, err) == (0, f"keishiki {version('keishiki')}\n", "")


def test_ctrl_c_during_the_command_imports_is_an_interrupt(monkeypatch):
    import keishiki.cli.app as app

    def interrupted(*_argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "_load_commands", interrupted)
    code, out, err = run_cli("info", "x")
    assert (code, out, err) == (130, "", "keishiki: error: interrupted\n")


def test_ctrl_c_inside_an_optional_import_is_not_a_missing_dependency(monkeypatch):
    import importlib

    import pytest

    from keishiki._optional import require

    def interrupted(name, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    with pytest.raises(KeyboardInterrupt):
        require("torch")
