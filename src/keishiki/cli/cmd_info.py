"""``keishiki info PATH...``: what model files or folders are and what they hold."""

from __future__ import annotations

import typer

from ._app import JSON_OPTION, app
from .paths import PATHS_HELP, each_path
from .render import console, escape, human_bytes, human_count, kv_table, section

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
    # str, not Path: Path("hf://org/name") would fold the "//"
    paths: list[str] = typer.Argument(..., metavar="PATHS", help=PATHS_HELP),
    json_out: bool = JSON_OPTION,
) -> int:
    """Identify each PATH by its content and summarise it, without loading weights or running
    code."""
    from ..inspecting import inspect

    def report(path: str) -> dict:
        return inspect(path).to_dict()

    return each_path(paths, report, render_data, json_out, schema="keishiki.info/1")


def render_info(model, path: str) -> None:
    """Print a ModelInfo as the human ``info`` view."""
    render_data(path, model.to_dict())


def render_data(path: str, data: dict) -> None:
    """Print ``ModelInfo.to_dict()`` as the human ``info`` view."""
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
