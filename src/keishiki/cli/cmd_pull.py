"""``keishiki pull REPO[@REV]``: download a Hub repository into the standard cache and scan it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from ._app import JSON_OPTION, app
from .render import console, human_bytes, kv_table, print_json, printable


@app.command()
def pull(
    repo: str = typer.Argument(..., metavar="REPO[@REV]",
                               help="org/name, optionally @branch, @tag or @commit."),
    include: list[str] = typer.Option(None, "--include", help="Only paths matching this glob "
                                      "(repeatable)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Skip paths matching this glob "
                                      "(repeatable)."),
    local_dir: Path = typer.Option(None, "--local-dir", help="Copy into this folder instead "
                                   "of the Hugging Face cache."),
    prefer_safetensors: bool = typer.Option(False, "--prefer-safetensors",
                                            help="Skip pickled weights (*.bin, *.pt, *.pth, "
                                            "*.ckpt) beside *.safetensors, as transformers "
                                            "loads them."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    json_out: bool = JSON_OPTION,
) -> int:
    """Download REPO from the Hugging Face Hub into its cache and scan every file.

    Through huggingface_hub: HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and your
    token apply, and transformers and vLLM find the same files.

    Exit codes as `keishiki scan`: 0 nothing unsafe, 1 dangerous or unknown code found
    (the files stay where they landed: pull only reports), 2 could not pull.
    """
    from ..hub.pull import pull as run_pull

    report = run_pull(repo, include=include or None, exclude=exclude or None,
                      local_dir=local_dir, prefer_safetensors=prefer_safetensors, quiet=quiet)
    code = report.exit_code()
    if json_out:
        print_json(report.to_dict())
        return code
    console.print(kv_table(None, [
        ("repository", report.repo_id + (f"@{report.revision}" if report.revision else "")),
        ("commit", report.commit),
        ("folder", str(report.folder)),
        ("files", f"{len(report.files)} ({human_bytes(report.nbytes)})"
                  + (", from the cache (offline)" if report.offline else "")),
        ("skipped", report.skipped or None),
    ]))
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if report.scan is not None:
        from .cmd_scan import _render

        _render(report.scan, show_safe=False)
        for fr in report.scan.files:
            for err in fr.errors:
                sys.stderr.write(printable(f"keishiki: error: {err}") + "\n")
    return code
