"""``keishiki tensors PATH``: every tensor's name, dtype, shape and bytes."""

from __future__ import annotations

import fnmatch

import typer
from rich.markup import escape

from ._app import JSON_OPTION, app
from .render import human_bytes, print_json, table


@app.command()
def tensors(
    # a str, not a Path: Path("hf://org/name") would fold the "//"
    path: str = typer.Argument(
        ...,
        metavar="PATH",
        help="Model file or folder (any format), "
        "or hf://ORG/NAME[@REV] on the Hub (read by range requests).",
    ),
    filter: str = typer.Option(None, "--filter", "-f", help="Only names matching this glob."),
    json_out: bool = JSON_OPTION,
) -> int:
    """List every tensor (name, dtype, shape, bytes, offset) without reading tensor data."""
    from ..formats import inspect

    model = inspect(path)
    infos = [t for t in model.tensors if filter is None or fnmatch.fnmatchcase(t.name, filter)]
    if json_out:
        # an object holding the list, so fields can be added without breaking scripts
        print_json(
            {
                "path": str(path),
                "format": model.format,
                "n_tensors": model.n_tensors,
                "filter": filter,
                "tensors": [t.to_dict() for t in infos],
            },
            schema="keishiki.tensors/1",
        )
        return 0
    # names, dtypes and file names come from the file: escaped so "[/x]" is not rich markup
    rows = [
        (
            escape(t.name),
            escape(str(t.dtype)),
            "\\[" + ", ".join(map(str, t.shape)) + "]",
            human_bytes(t.nbytes),
            "" if t.data_offset is None else str(t.data_offset),
            escape(str(t.file or "")),
        )
        for t in infos
    ]
    table(
        f"{len(infos)} of {model.n_tensors} tensors in {escape(str(path))}",
        ["name", "dtype", "shape", "bytes", "offset", "file"],
        rows,
        justify_right=["bytes", "offset"],
    )
    return 0
