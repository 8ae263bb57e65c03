"""``keishiki tensors PATH...``: every tensor's name, dtype, shape and bytes."""

from __future__ import annotations

import fnmatch

import typer

from ._app import JSON_OPTION, app
from .paths import PATHS_HELP, each_path
from .render import escape, human_bytes, table


@app.command()
def tensors(
    # str, not Path: Path("hf://org/name") would fold the "//"
    paths: list[str] = typer.Argument(..., metavar="PATHS", help=PATHS_HELP),
    filter: str = typer.Option(None, "--filter", "-f", help="Only names matching this glob."),
    json_out: bool = JSON_OPTION,
) -> int:
    """List every tensor (name, dtype, shape, bytes, offset) of each PATH without reading
    tensor data."""
    from ..inspecting import inspect

    def report(path: str) -> dict:
        model = inspect(path)
        # an object holding the list, so fields can be added without breaking scripts
        return {
            "path": str(path),
            "format": model.format,
            "n_tensors": model.n_tensors,
            "filter": filter,
            "tensors": [
                t.to_dict()
                for t in model.tensors
                if filter is None or fnmatch.fnmatchcase(t.name, filter)
            ],
        }

    return each_path(paths, report, _render, json_out, schema="keishiki.tensors/1")


def _render(path: str, data: dict) -> None:
    # names, dtypes and file names come from the file: escaped so "[/x]" is not rich markup
    rows = [
        (
            escape(t["name"]),
            escape(str(t["dtype"])),
            "\\[" + ", ".join(map(str, t["shape"])) + "]",
            human_bytes(t["nbytes"]),
            "" if t.get("data_offset") is None else str(t["data_offset"]),
            escape(str(t.get("file") or "")),
        )
        for t in data["tensors"]
    ]
    table(
        f"{len(rows)} of {data['n_tensors']} tensors in {escape(str(path))}",
        ["name", "dtype", "shape", "bytes", "offset", "file"],
        rows,
        justify_right=["bytes", "offset"],
    )
