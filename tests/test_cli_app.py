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
