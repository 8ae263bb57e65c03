"""``keishiki info PATH``: what a model file or folder is and what it holds."""

from __future__ import annotations

import typer
from rich.markup import escape

from ._app import JSON_OPTION, app
from .render import console, human_bytes, human_count, kv_table, print_json, section

# ModelInfo.to_dict() keys shown in the summary table, not again as sections
_COMMON = {
    "path",
    "format",
    "variant",
    "format_version",
    "file_size",
    "n_tensors",
    "n_parameters",
    "total_bytes",
    "dtypes",
    "metadata",
    "config",
    "graph",
    "gguf",
    "safety",
    "warnings",
}


@app.command()
def info(
    # a str, not a Path: Path("hf://org/name") would fold the "//"
    path: str = typer.Argument(
        ...,
        metavar="PATH",
        help="Model file or folder (any format), "
        "or hf://ORG/NAME[@REV] on the Hub (read by range requests).",
    ),
    json_out: bool = JSON_OPTION,
) -> int:
    """Identify PATH by its content and summarise it, without loading weights or running code."""
    from ..formats import inspect

    model = inspect(path)
    if json_out:
        print_json(model.to_dict(), schema="keishiki.info/1")
        return 0
    render_info(model, str(path))
    return 0


def render_info(model, path: str) -> None:
    """Print a ModelInfo as the human ``info`` view."""
    data = model.to_dict()
    fmt = data["format"] + (f" ({data['variant']})" if data.get("variant") else "")
    console.print(
        kv_table(
            None,
            [
                ("path", path),
                ("format", fmt),
                ("format version", data.get("format_version")),
                ("size on disk", human_bytes(data["file_size"])),
                ("tensors", f"{data['n_tensors']:,}"),
                ("parameters", human_count(data["n_parameters"])),
                ("tensor bytes", human_bytes(data["total_bytes"])),
                ("dtypes", ", ".join(f"{k}×{v}" for k, v in data["dtypes"].items())),
            ],
        )
    )
    for key in ("metadata", "config", "graph", "gguf"):
        if data.get(key):
            # the structured *_detail twins of inputs/outputs are for --json readers; the
            # meaning of generated names gets a section of its own, in full
            section(
                key,
                {
                    k: v
                    for k, v in data[key].items()
                    if not k.endswith("_detail") and k != "generated_names"
                },
            )
    generated = (data.get("graph") or {}).get("generated_names")
    if generated:
        section(
            "generated names",
            {
                kind: f"{g['count']}× (e.g. {', '.join(g['examples'])}): {g['meaning']}"
                for kind, g in generated.items()
            },
        )
    for key, value in data.items():
        if key not in _COMMON and isinstance(value, dict) and value:
            section(key, value)
    if data.get("safety"):
        section("safety", data["safety"])
    for warning in data.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {escape(str(warning))}")
