"""``keishiki scan PATH...``: would loading these files run code?  Judged without loading them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.markup import escape

from ._app import JSON_OPTION, app
from .render import console, print_json, printable, table

_STYLE = {"dangerous": "bold red", "unknown": "yellow", "error": "magenta", "safe": "green"}


@app.command()
def scan(
    # str, not Path: Path("hf://org/name") would fold the "//"
    paths: list[str] = typer.Argument(
        ...,
        metavar="PATHS",
        help="Files or folders (archives are opened, folders walked), "
        "or hf://ORG/NAME[@REV] on the Hub (read by range requests, weights not downloaded).",
    ),
    json_out: bool = JSON_OPTION,
    allow_unknown: bool = typer.Option(
        False, "--allow-unknown", help="Exit 0 when only unknown (not dangerous) globals are found."
    ),
    show_safe: bool = typer.Option(False, "--all", help="Also list safe findings."),
    quiet: bool = False,  # -q/--quiet: cli/_app.py
) -> int:
    """Scan pickles, archives, TorchScript, Keras and ONNX files for code that runs on load.

    Exit codes: 0 nothing unsafe, 1 dangerous or unknown globals (unknown: not on the
    allowlist of what legitimate checkpoints reference; --allow-unknown exits 0 for those),
    2 could not scan (damaged or unrecognised file, and nothing unsafe seen before the damage).
    """
    report = _scan(paths, quiet or json_out)
    code = report.exit_code(allow_unknown=allow_unknown)
    try:
        if json_out:
            data = report.to_dict(include_safe=show_safe)
            data["exit_code"] = code
            data["files"] = [f for f in data["files"] if not f["skipped"] or f["findings"]]
            if getattr(report, "remote", None):
                data["remote"] = report.remote
            print_json(data, schema="keishiki.scan/1")
            return code
        _render(report, show_safe)
    except BrokenPipeError:
        # the reader stopped early (`| head`): the verdict, not the pipe, sets the exit code,
        # or `scan evil.pt | head; echo ${PIPESTATUS[0]}` would say 0
        return code
    for fr in report.files:
        for err in fr.errors:
            sys.stderr.write(printable(f"keishiki: error: {err}") + "\n")
    return code


def _scan(paths: list[str], quiet: bool):
    """``keishiki.scan(*paths)``, with a progress bar over the local files on a terminal."""
    from .._scan import scan as run_scan
    from .._scan.scanner import scan_paths
    from ..core.progress import progress
    from ..hub import is_hf_path

    local = [Path(p) for p in paths if not is_hf_path(p)]
    remote = [p for p in paths if is_hf_path(p)]
    show = not quiet and sys.stderr.isatty()
    with progress(_count(local) if show else None, "scanning", quiet=not show) as advance:
        report = scan_paths(local, advance)
    if remote:  # judged from byte ranges (no bar: a few requests per file)
        found = run_scan(*remote)
        report.files.extend(found.files)
        report.remote = found.remote
    return report


def _count(paths: list[Path]) -> int:
    """How many files the scan will open (the bar's total; links are not followed)."""
    total = 0
    for path in paths:
        if not path.is_dir():
            total += 1
            continue
        for _dirpath, _dirnames, filenames in os.walk(path, followlinks=False):
            total += len(filenames)
    return total


def _render(report, show_safe: bool) -> None:
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
