"""Command lines that run without typer.

typer and the click it vendors cost 25-60 ms of start-up, as much as ``keishiki scan`` of a
1.9 GB checkpoint takes to judge it, and picklescan (the tool ``scan`` is measured against:
benchmarks/bench_startup.py) has no such framework.  So a plain ``keishiki scan PATHS``,
with only switches that take no value, is parsed here and runs the same function the typer
command runs.  Anything else (``--help``, ``-v``, an unknown or misspelt option, ``-qv``,
``--json=1``, no path, shell completion) goes to typer, which parses it, asks for what is
missing or says what is wrong, as it always did.

``tests/cli/test_fast.py`` checks that :data:`SWITCHES` are exactly the typer command's flags
and that both ways print the same bytes and exit with the same code.
"""

from __future__ import annotations

import os
from typing import Callable

# command -> {switch: the parameter it sets}: the options of the typer command that take no
# value (cmd_scan.py, and -q/--quiet from cli/_app.py); -v/--verbose is left to typer
SWITCHES = {
    "scan": {
        "--json": "json_out",
        "--allow-unknown": "allow_unknown",
        "--all": "show_safe",
        "--quiet": "quiet",
        "-q": "quiet",
    },
}


def plain_command(argv: list[str]) -> Callable[[], int] | None:
    """The command ``argv`` asks for, ready to run, when it is a plain command line of a
    command in :data:`SWITCHES`; ``None`` when typer should parse it."""
    if not argv or argv[0] not in SWITCHES or "_KEISHIKI_COMPLETE" in os.environ:
        return None
    switches = SWITCHES[argv[0]]
    chosen = dict.fromkeys(switches.values(), False)
    paths: list[str] = []
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--":  # the rest are paths, even those that start with "-"
            paths.extend(rest)
        elif arg in switches:
            chosen[switches[arg]] = True
        elif arg.startswith("-"):
            return None
        else:
            paths.append(arg)
    if not paths:
        return None
    return lambda: _scan(paths, **chosen)


def _scan(paths: list[str], *, quiet: bool, **switches: bool) -> int:
    from .output import output
    from .scanning import run_scan

    with output(quiet, 0):
        return run_scan(paths, quiet=quiet, **switches)  # (Ctrl-C: cli/app.py says it, 130)
