"""Commands that take several paths (``info``, ``tensors``): one report per path, the worst
exit code, and one JSON document holding the list."""

from __future__ import annotations

import sys
from typing import Any, Callable

from ..errors import KeishikiError
from .render import console, print_json, printable

PATHS_HELP = (
    "Model files or folders (any format), "
    "or hf://ORG/NAME[@REV] on the Hub (read by range requests)."
)


def _error(exc: Exception) -> tuple[str, int]:
    """The CLI's one line for what went wrong, and its exit code (as cli/app.py says them)."""
    from .app import as_flags, os_error_line

    if isinstance(exc, KeishikiError):
        return as_flags(str(exc)).replace("\n", " "), exc.exit_code
    assert isinstance(exc, OSError)
    return os_error_line(exc), 2


def each_path(
    paths: list[str],
    report: Callable[[str], dict[str, Any]],
    render: Callable[[str, dict[str, Any]], None],
    json_out: bool,
    schema: str,
) -> int:
    """Make ``report(path)`` (a JSON-ready dict) for each path and show it (``render(path,
    report)``, or JSON).

    One path: the command as it always was (an error is the CLI's one line).  Several: an
    error on one path is its line on stderr and its exit code, the others still run, and
    the exit code is the worst; ``--json`` prints one object, schema
    ``keishiki.<command>-list/1``, whose ``reports`` hold each path's document (or its
    ``error``)."""
    if len(paths) == 1:
        data = report(paths[0])
        if json_out:
            print_json(data, schema=schema)
        else:
            render(paths[0], data)
        return 0
    reports: list[dict[str, Any]] = []
    worst, shown = 0, False
    for path in paths:
        try:
            data = report(path)
        except (KeishikiError, OSError) as exc:
            line, code = _error(exc)
            sys.stderr.write(f"keishiki: error: {printable(line)}\n")
            reports.append({"path": path, "error": line, "exit_code": code})
            worst = max(worst, code)
            continue
        if json_out:
            reports.append({"schema": schema, **data})
        else:
            if shown:
                console.print()  # a blank line between two reports
            render(path, data)
            shown = True
    if json_out:
        name = schema.rsplit("/", 1)[0]
        print_json({"exit_code": worst, "reports": reports}, schema=f"{name}-list/1")
    return worst
