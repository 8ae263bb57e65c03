"""``keishiki map A B``: which tensor of A is which tensor of B, across formats."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import JSON_OPTION, app
from .args import HF_HELP, model_path
from .cmd_compare import render_unmatched, shape_text
from .render import escape, print_json, table


@app.command(name="map")
def map_cmd(
    a: Path = typer.Argument(
        ..., metavar="A", parser=model_path, help="Model A (any format)." + HF_HELP
    ),
    b: Path = typer.Argument(..., metavar="B", parser=model_path, help="Model B (any format)."),
    no_values: bool = typer.Option(
        False, "--no-values", help="Pair by names only (never read tensor data)."
    ),
    show: str = typer.Option(
        "pairs",
        "--show",
        help="pairs (default) or all (also list ONNX graph constants left unpaired).",
    ),
    json_out: bool = JSON_OPTION,
) -> int:
    """Pair every tensor of A with its counterpart in B, across formats.

    Matchers: exact names, GGUF names, wrapper prefixes (module., _orig_mod., model.), then
    content (ONNX exporter names such as onnx::MatMul_N and val_N, transposed or not).
    Exit 1 when some tensor stays unpaired.
    """
    if show not in ("pairs", "all"):
        from ..errors import InvalidRequest

        raise InvalidRequest(f"--show {show}: choose pairs or all")
    from ..inspecting import inspect
    from ..mapping import map_names

    name_map = map_names(inspect(a), inspect(b), by_value=not no_values)
    ua, ub = name_map.counted_unmatched
    if json_out:
        print_json(name_map.to_dict(), schema="keishiki.map/1")
        return 1 if ua or ub else 0
    rows = [
        (
            escape(p.a),
            escape(p.b),
            p.how + (" (shared)" if p.extra.get("shared") else ""),
            shape_text(p.a_shape),
            shape_text(p.b_shape),
            p.a_dtype if p.a_dtype == p.b_dtype else f"{p.a_dtype} / {p.b_dtype}",
        )
        for p in name_map.pairs
    ]
    table(
        f"{len(name_map.pairs)} pairs: {escape(str(a))} ({name_map.a_format}) ↔ "
        f"{escape(str(b))} ({name_map.b_format})",
        ["A", "B", "how", "A shape", "B shape", "dtype"],
        rows,
    )
    render_unmatched(name_map, show_all=show == "all")
    return 1 if ua or ub else 0
