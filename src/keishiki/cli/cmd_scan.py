"""``keishiki scan PATH...``: would loading these files run code?  Judged without loading them."""

from __future__ import annotations

import typer

from ._app import JSON_OPTION, app
from .scanning import run_scan


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
    return run_scan(
        paths, json_out=json_out, allow_unknown=allow_unknown, show_safe=show_safe, quiet=quiet
    )
