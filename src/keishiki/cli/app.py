"""Entry point: load the command modules, run, and map errors to one line and an exit code.

A plain ``keishiki scan PATHS`` runs without typer (start-up: ``cli/fast.py``); typer and
the command modules are imported for everything else.

Exit codes: 0 done / nothing unsafe, 1 a finding (unsafe file, verification mismatch),
2 could not do it (bad input, missing dependency, usage error), 130 interrupted.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from ..errors import KeishikiError
from .fast import plain_command

# commands listed in `keishiki --help` in this order; modules not named here follow
ORDER = [
    "info",
    "tensors",
    "scan",
    "pull",
    "formats",
    "convert",
    "quantize",
    "run",
    "bench",
    "serve",
    "compare",
    "map",
    "view",
    "demo",
]


def _order(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def _load_commands(argv: list[str] | None = None) -> None:
    """Import the command modules: only ``cmd_<name>`` when ``argv`` names a command that has
    one (start-up time: each module brings its own imports, and typer builds every
    registered command's options), else all of them (``--help``, a typo to suggest for)."""
    import importlib
    import pkgutil

    from . import __path__ as pkg_path
    from ._app import app

    found = [m.name[4:] for m in pkgutil.iter_modules(pkg_path) if m.name.startswith("cmd_")]
    if argv and argv[0] in found:  # the program has no options but --help: argv[0] is it
        importlib.import_module(f"{__package__}.cmd_{argv[0]}")
        return
    for name in sorted(found, key=_order):
        importlib.import_module(f"{__package__}.cmd_{name}")
    # commands register on import: keep ORDER even when one was loaded alone before
    app.registered_commands.sort(
        key=lambda c: _order(getattr(c.callback, "__module__", "").rsplit(".cmd_")[-1])
    )


def _command(argv: list[str] | None = None):
    """The click command: a group even when one command is loaded (the app has a callback),
    with typer's completion options and cli/_startup.py's cheaper coercion and help."""
    import typer

    from . import _startup
    from ._app import app

    command = typer.main.get_command(app)
    _startup.plain_coercion(command)
    _startup.plain_help(command)
    if not argv or "--help" in argv or "-h" in argv:
        _startup.import_rich_utils()
    return command


def _fail(message: str, code: int) -> int:
    from .plain import printable  # (messages quote file names and names from files)

    sys.stderr.write(f"keishiki: error: {printable(message)}\n")
    return code


# errors of the machine, not of keishiki: said as such, in the words a user searches for
_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder",
    errno.ENOTDIR: "not a folder",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error (a failing disk?)",
}


# the library's messages name Python parameters (force=True, dtype='float8', `atol`); the CLI
# says the flag that sets each: NAME=True -> --flag, NAME=False -> --no-flag,
# NAME=VALUE -> --flag VALUE, `NAME` and a bare NAME= -> --flag
PARAM_FLAGS = {
    "atol": "--atol",
    "block_size": "--block-size",
    "dtype": "--dtype",
    "example_input": "--example-input",
    "exclude": "--exclude",
    "exporter": "--exporter",
    "external_data": "--external-data",
    "force": "--force",
    "include": "--include",
    "key": "--key",
    "method": "--method",
    "opset": "--opset",
    "prefer_safetensors": "--prefer-safetensors",
    "quant": "--quant",
    "rtol": "--rtol",
    "shard_size": "--shard-size",
    "split_max_size": "--split-max-size",
    "split_max_tensors": "--split-max-tensors",
    "strict": "--strict",
    "to": "--to",
    "tokenizer": "--tokenizer",
    "trust_remote_code": "--trust-remote-code",
    "verify": "--verify",
}
_NAMES = "|".join(PARAM_FLAGS)
_PARAM = rf"`({_NAMES})`|(?<![\w.\-/])({_NAMES})=(True\b|False\b|(?=[\s,;:)]|$))?"


def as_flags(message: str) -> str:
    """A library message in the CLI's words: ``pass force=True to overwrite`` becomes
    ``pass --force to overwrite``, ``dtype='int3'`` becomes ``--dtype 'int3'``."""

    def flag(match: re.Match[str]) -> str:
        if match[1]:
            return PARAM_FLAGS[match[1]]
        name, switch = PARAM_FLAGS[match[2]], match[3]
        if switch == "False":
            return "--no-" + name[2:]
        return name if switch is not None else name + " "  # (a value follows)

    return re.sub(_PARAM, flag, message)  # (compiled on first use, not at every start-up)


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: what happened (ENOSPC, EROFS, EACCES, ...) and where."""
    # (numpy's tofile raises an OSError with no errno on a full disk: its text says why)
    what = _OS_ERRORS.get(exc.errno, exc.strerror or str(exc) or type(exc).__name__)
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {what}" if where else what


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises, never prints a traceback
    unless ``KEISHIKI_DEBUG=1``)."""
    try:
        plain = plain_command(argv) if argv is not None else None
        if plain is not None:
            return plain()
        _load_commands(argv)  # inside the try: Ctrl-C during the imports is an interrupt too
        command = _command(argv)
        result = command.main(args=argv, prog_name="keishiki", standalone_mode=False)
        if result == 130:  # typer turns Ctrl-C inside a command into 130, saying nothing
            return _fail("interrupted", 130)
        return result if isinstance(result, int) else 0
    except BaseException as exc:
        code = _exit_code(exc, debug=bool(os.environ.get("KEISHIKI_DEBUG")))
        if code is None:
            raise
        return code


def _exit_code(exc: BaseException, debug: bool) -> int | None:
    """The exit code for ``exc`` (its line said on stderr), or None to let it through:
    with ``debug``, or for what is not an error of the command (GeneratorExit)."""
    if "typer" in sys.modules:  # (typer's and click's exceptions exist only once it is in)
        from typer import exceptions as typer_exceptions
        from typer._click import exceptions as click_exceptions  # typer >= 0.20 vendors click

        if isinstance(exc, typer_exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, typer_exceptions.Abort):
            return _fail("interrupted", 130)
        if isinstance(exc, click_exceptions.ClickException):  # usage: click's message, exit 2
            exc.show()
            return exc.exit_code
    if isinstance(exc, SystemExit):  # typer's completion (--show-completion, shell requests)
        return exc.code if isinstance(exc.code, int) else 0
    if isinstance(exc, KeyboardInterrupt):
        return _fail("interrupted", 130)
    if isinstance(exc, KeishikiError):
        return None if debug else _fail(as_flags(str(exc)).replace("\n", " "), exc.exit_code)
    if isinstance(exc, BrokenPipeError):
        return 0
    if debug or not isinstance(exc, Exception):
        return None
    if isinstance(exc, OSError):
        return _fail(os_error_line(exc), 2)
    if isinstance(exc, MemoryError):
        return _fail(
            "out of memory (the model, or a size a file claims, is too large for this machine)", 2
        )
    # a bug: still one line, with the way to see more
    return _fail(
        f"internal error: {type(exc).__name__}: {exc} "
        f"(KEISHIKI_DEBUG=1 shows the traceback)".replace("\n", " "),
        2,
    )


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
