"""What ``keishiki scan`` does and prints, without typer: ``cmd_scan.py`` declares its
arguments for typer, and ``cli/fast.py`` runs it straight from a plain command line (the
start-up of ``scan`` is measured against picklescan's: benchmarks/bench_startup.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.markup import escape

from .render import console, print_json, printable, table

_STYLE = {"dangerous": "bold red", "unknown": "yellow", "error": "magenta", "safe": "green"}


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
    from ..core.progress import progress
    from ..hub import is_hf_path

    local = [p for p in paths if not is_hf_path(p)]  # ("" is refused by scan_paths)
    remote = [p for p in paths if is_hf_path(p)]
    show = not quiet and sys.stderr.isatty()
    with progress(_count(local) if show else None, "scanning", quiet=not show) as advance:
        report = scan_paths(local, advance)
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
    verdict line."""
    files = [fr for fr in report.files if not fr.skipped]
    table(
        None,
        ["verdict", "file", "kind", "dangerous", "unknown", "safe"],
        [
            [
                f"[{_STYLE[fr.verdict]}]{fr.verdict}[/]",
                escape(fr.path),
                fr.kind or "-",
                str(sum(f.severity == "dangerous" for f in fr.findings)),
                str(sum(f.severity == "unknown" for f in fr.findings)),
                str(sum(f.severity == "safe" for f in fr.findings)),
            ]
            for fr in files
        ],
        justify_right=["dangerous", "unknown", "safe"],
    )
    shown = [f for f in report.findings if show_safe or f.severity != "safe"]
    if shown:
        table(
            "findings",
            ["severity", "where", "opcode", "global", "reason"],
            [
                [
                    f"[{_STYLE[f.severity]}]{f.severity}[/]",
                    escape(f.where),
                    f.opcode,
                    escape(f.global_),
                    escape(f.reason),
                ]
                for f in shown[:500]
            ],
        )
        if len(shown) > 500:
            console.print(f"… {len(shown) - 500} more findings (use --json)")
    style = _STYLE[report.verdict]
    console.print(f"verdict: [{style}]{report.verdict}[/] ({len(files)} files scanned)")
