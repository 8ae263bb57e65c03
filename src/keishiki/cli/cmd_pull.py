"""``keishiki pull REPO[@REV]``: download a Hub repository into the standard cache and scan it;
``keishiki pull onnx-zoo:NAME``: one ONNX Model Zoo model, sha256-checked against the zoo's
manifest (:mod:`keishiki.hub.zoo`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

import typer

from ..errors import InvalidRequest
from ._app import JSON_OPTION, app
from .render import console, escape, human_bytes, kv_table, print_json


@app.command()
def pull(
    repo: str = typer.Argument(
        ...,
        metavar="REPO[@REV]",
        help="org/name, optionally @branch, @tag or @commit; or "
        "onnx-zoo:NAME for an ONNX Model Zoo model.",
    ),
    include: list[str] = typer.Option(
        None, "--include", help="Only paths matching this glob (repeatable)."
    ),
    exclude: list[str] = typer.Option(
        None, "--exclude", help="Skip paths matching this glob (repeatable)."
    ),
    local_dir: Path = typer.Option(
        None, "--local-dir", help="Copy into this folder instead of the Hugging Face cache."
    ),
    prefer_safetensors: bool = typer.Option(
        False,
        "--prefer-safetensors",
        help="Skip pickled weights (*.bin, *.pt, *.pth, "
        "*.ckpt) beside *.safetensors, as transformers "
        "loads them.",
    ),
    opset: int = typer.Option(
        None,
        "--opset",
        help="onnx-zoo:NAME: the version with exactly this opset (default: the highest).",
    ),
    zoo_repo: str = typer.Option(
        None,
        "--zoo-repo",
        metavar="ORG/NAME[@REV]",
        help="onnx-zoo:NAME: the repository holding "
        "ONNX_HUB_MANIFEST.json (default: onnxmodelzoo/legacy_models).",
    ),
    quiet: bool = False,  # -q/--quiet: cli/_app.py
    json_out: bool = JSON_OPTION,
) -> int:
    """Download REPO from the Hugging Face Hub into its cache and scan every file.

    Through huggingface_hub: HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and your
    token apply, and transformers and vLLM find the same files.

    `onnx-zoo:NAME` fetches one model of the ONNX Model Zoo (names as onnx.hub: any case)
    and checks its sha256 against the zoo's manifest before scanning it.

    Exit codes as `keishiki scan`: 0 nothing unsafe, 1 dangerous or unknown code found
    (the files stay where they landed: pull only reports), 2 could not pull.
    """
    from ..hub.zoo import ZOO_PREFIX

    if repo.startswith(ZOO_PREFIX):
        unused = [
            flag
            for flag, value in (
                ("--include", include),
                ("--exclude", exclude),
                ("--local-dir", local_dir),
                ("--prefer-safetensors", prefer_safetensors),
            )
            if value
        ]
        if unused:
            raise InvalidRequest(
                f"{', '.join(unused)}: not for {ZOO_PREFIX}NAME (a zoo model is one file)"
            )
        with _interrupt_ends_at_once():
            return _pull_zoo(repo[len(ZOO_PREFIX) :], opset, zoo_repo, quiet, json_out)
    if opset is not None or zoo_repo is not None:
        raise InvalidRequest(f"--opset and --zoo-repo are for {ZOO_PREFIX}NAME, not {repo}")
    from ..hub.pull import pull as run_pull

    with _interrupt_ends_at_once():
        report = run_pull(
            repo,
            include=include or None,
            exclude=exclude or None,
            local_dir=local_dir,
            prefer_safetensors=prefer_safetensors,
            quiet=quiet,
        )
    code = report.exit_code()
    if json_out:
        print_json(report.to_dict(), schema="keishiki.pull/1")
        return code
    console.print(
        kv_table(
            None,
            [
                ("repository", report.repo_id + (f"@{report.revision}" if report.revision else "")),
                ("commit", report.commit),
                ("folder", str(report.folder)),
                (
                    "files",
                    f"{len(report.files)} ({human_bytes(report.nbytes)})"
                    + (", from the cache (offline)" if report.offline else ""),
                ),
                ("skipped", report.skipped or None),
            ],
        )
    )
    from .app import as_flags  # the library names parameters; the CLI says its flags

    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(as_flags(warning))}")
    _render_scan(report.scan)
    return code


@contextlib.contextmanager
def _interrupt_ends_at_once() -> Iterator[None]:
    """Ctrl-C ends the process at once (exit 130): huggingface_hub downloads on a thread
    pool, and a KeyboardInterrupt waits for its downloads to finish (a 4 MiB file on a
    slow line ran on for a minute).  What the end leaves, as ``kill`` would (a partial
    blob), no loader sees; in the cache, the next pull removes it (in a --local-dir,
    huggingface_hub resumes it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def end(_signum, _frame) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\x1b[?25h")  # the progress bar hid the cursor
        sys.stderr.write("\nkeishiki: error: interrupted\n")
        sys.stderr.flush()
        os._exit(130)

    previous = signal.signal(signal.SIGINT, end)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _pull_zoo(
    name: str, opset: int | None, zoo_repo: str | None, quiet: bool, json_out: bool
) -> int:
    from ..hub.zoo import DEFAULT_REPO, pull_model

    report = pull_model(name, zoo_repo or DEFAULT_REPO, opset, silent=quiet)
    code = report.exit_code()
    if json_out:
        print_json(report.to_dict(), schema="keishiki.pull-zoo/1")
        return code
    console.print(
        kv_table(
            None,
            [
                ("zoo", report.repo_id + (f"@{report.revision}" if report.revision else "")),
                ("commit", report.commit),
                ("model", f"{report.info.model} (opset {report.info.opset})"),
                (
                    "file",
                    str(report.path) + (" (from the cache, offline)" if report.offline else ""),
                ),
                ("size", human_bytes(report.nbytes)),
                ("sha256", f"{report.sha256} (matches the manifest)"),
            ],
        )
    )
    _render_scan(report.scan)
    return code


def _render_scan(scan) -> None:
    """The scan verdict as ``keishiki scan`` prints it; unread parts as one-line errors."""
    if scan is None:
        return
    from .scanning import render_report, say_errors

    render_report(scan, show_safe=False)
    say_errors(scan)
