"""What ``keishiki scan`` does and prints, without typer: ``cmd_scan.py`` declares its
arguments for typer, and ``cli/fast.py`` runs it straight from a plain command line (the
start-up of ``scan`` is measured against picklescan's: benchmarks/bench_startup.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .plain import draw_table, no_colour, print_json, printable, write_text

_STYLE = {"dangerous": "bold red", "unknown": "yellow", "error": "magenta", "safe": "green"}
_FILE_COLUMNS = ["verdict", "file", "kind", "dangerous", "unknown", "safe"]
_FINDING_COLUMNS = ["severity", "where", "opcode", "global", "reason"]
_COUNTS = {"dangerous", "unknown", "safe"}  # right-justified
MAX_SHOWN = 500  # findings in the table; --json has them all


def run_scan(
    paths: list[str], *, json_out: bool, allow_unknown: bool, show_safe: bool, quiet: bool
) -> int:
    """``keishiki scan PATHS``: scan, print the table (or ``--json``), return the exit code."""
    report = scan_with_bar(paths, quiet or json_out)
    code = report.exit_code(allow_unknown=allow_unknown)
    try:
        if json_out:
            data = report.to_dict(include_safe=show_safe)
            data["exit_code"] = code
            data["files"] = [f for f in data["files"] if not f["skipped"] or f["findings"]]
            if getattr(report, "remote", None):
                data["remote"] = report.remote
            print_json(data, schema="keishiki.scan/1")
        else:
            render_report(report, show_safe)
    except BrokenPipeError:
        # the reader stopped early (`| head`): the verdict, not the pipe, sets the exit code,
        # or `scan evil.pt | head; echo ${PIPESTATUS[0]}` would say 0
        pass
    except UnicodeEncodeError:  # an encoding that cannot show a name: the verdict stands
        _say(
            [
                "keishiki: error: the output's encoding cannot show the report (PYTHONIOENCODING=utf-8)"
            ]
        )
    say_errors(report)
    return code


def say_errors(report) -> None:
    """Each part of ``report`` that could not be read, as one line on stderr."""
    _say([printable(f"keishiki: error: {err}") for fr in report.files for err in fr.errors])


def _say(lines: list[str]) -> None:
    """Lines on stderr; a stderr that is gone or cannot encode them does not change the
    exit code (the verdict's)."""
    try:
        for line in lines:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, UnicodeEncodeError):  # (ValueError: stderr closed)
        pass


def scan_with_bar(paths: list[str], quiet: bool):
    """``keishiki.scan(*paths)``, with a progress bar over the local files on a terminal."""
    from .._scan import scan as scan_remote
    from .._scan.scanner import scan_paths
    from ..hub import is_hf_path

    local = [p for p in paths if not is_hf_path(p)]  # ("" is refused by scan_paths)
    remote = [p for p in paths if is_hf_path(p)]
    if not quiet and sys.stderr.isatty():
        from ..core.progress import progress

        with progress(_count(local), "scanning") as advance:
            report = scan_paths(local, advance)
    else:  # no bar to draw: the files spread over the cores that pay (_scan/parallel.py)
        report = scan_paths(local, workers=os.cpu_count() or 1)
    if remote:  # judged from byte ranges (no bar: a few requests per file)
        found = scan_remote(*remote)
        report.files.extend(found.files)
        report.remote = found.remote
    return report


def _count(paths: list[str]) -> int:
    """How many files the scan will open (the bar's total; links are not followed)."""
    total = 0
    for path in map(Path, paths):
        if not path.is_dir():
            total += 1
            continue
        for _dirpath, _dirnames, filenames in os.walk(path, followlinks=False):
            total += len(filenames)
    return total


def render_report(report, show_safe: bool) -> None:
    """The scan table, the findings table (not the safe ones unless ``show_safe``) and the
    verdict line: plain characters when stdout has no colour, else through rich."""
    files = [fr for fr in report.files if not fr.skipped]
    file_rows = [
        [
            fr.verdict,
            fr.path,
            fr.kind or "-",
            *(
                str(sum(f.severity == s for f in fr.findings))
                for s in ("dangerous", "unknown", "safe")
            ),
        ]
        for fr in files
    ]
    shown = [f for f in report.findings if show_safe or f.severity != "safe"]
    finding_rows = [[f.severity, f.where, f.opcode, f.global_, f.reason] for f in shown[:MAX_SHOWN]]
    more = len(shown) - MAX_SHOWN
    verdict = (report.verdict, f" ({len(files)} files scanned)")
    text = _plain_report(file_rows, finding_rows, more, verdict) if no_colour() else None
    if text is not None:
        write_text(text)
    else:
        _rich_report(file_rows, finding_rows, more, verdict)


def _plain_report(file_rows, finding_rows, more: int, verdict: tuple[str, str]) -> str | None:
    """What :func:`_rich_report` prints without colour, as one string; None when a cell
    needs folding (rich does that)."""
    parts = [draw_table(_FILE_COLUMNS, _printable(file_rows), _COUNTS)]
    if finding_rows:
        parts += ["findings\n", draw_table(_FINDING_COLUMNS, _printable(finding_rows), set())]
        if more > 0:
            parts.append(f"… {more} more findings (use --json)\n")
    parts.append(printable(f"verdict: {verdict[0]}{verdict[1]}") + "\n")
    return None if None in parts else "".join(parts)  # type: ignore[arg-type]


def _printable(rows: list[list[str]]) -> list[list[str]]:
    return [[printable(cell) for cell in row] for row in rows]


def _rich_report(file_rows, finding_rows, more: int, verdict: tuple[str, str]) -> None:
    """The report through rich: the first cell of each row in its verdict's colour."""
    from .render import console, escape, table

    def marked(rows: list[list[str]]) -> list[list[str]]:
        return [[f"[{_STYLE[row[0]]}]{row[0]}[/]", *map(escape, row[1:])] for row in rows]

    table(None, _FILE_COLUMNS, marked(file_rows), justify_right=_COUNTS)
    if finding_rows:
        table("findings", _FINDING_COLUMNS, marked(finding_rows))
        if more > 0:
            console.print(f"… {more} more findings (use --json)")
    console.print(f"verdict: [{_STYLE[verdict[0]]}]{verdict[0]}[/]{escape(verdict[1])}")
