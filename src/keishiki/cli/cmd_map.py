"""``keishiki map A B``: which tensor of A is which tensor of B, across formats."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import JSON_OPTION, app
from .render import console, print_json, table


def shape_text(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


@app.command(name="map")
def map_cmd(
    a: Path = typer.Argument(..., help="Model A (any format)."),
    b: Path = typer.Argument(..., help="Model B (any format)."),
    no_values: bool = typer.Option(False, "--no-values", help="Pair by names only (never "
                                   "read tensor data)."),
    show: str = typer.Option("pairs", "--show", help="pairs (default) or all (also list "
                             "ONNX graph constants left unpaired)."),
    json_out: bool = JSON_OPTION,
) -> int:
    """Pair every tensor of A with its counterpart in B: exact names, wrapper prefixes
    (module., _orig_mod., model.), GGUF names, and ONNX exporter names (onnx::MatMul_N,
    val_N) by content, transposed or not. Exit 1 when some tensor stays unpaired."""
    from ..formats import inspect
    from ..mapping import map_names

    name_map = map_names(inspect(a), inspect(b), by_value=not no_values)
    ua, ub = name_map.counted_unmatched
    if json_out:
        print_json(name_map.to_dict())
        return 1 if ua or ub else 0
    rows = [(p.a, p.b, p.how + (" (shared)" if p.extra.get("shared") else ""),
             shape_text(p.a_shape), shape_text(p.b_shape),
             p.a_dtype if p.a_dtype == p.b_dtype else f"{p.a_dtype} / {p.b_dtype}")
            for p in name_map.pairs]
    table(f"{len(name_map.pairs)} pairs: {a} ({name_map.a_format}) ↔ {b} ({name_map.b_format})",
          ["A", "B", "how", "A shape", "B shape", "dtype"], rows)
    render_unmatched(name_map, show_all=show == "all")
    return 1 if ua or ub else 0


def render_unmatched(name_map, show_all: bool = False) -> None:
    """Print the tensors left unpaired on each side; ONNX graph constants (shapes, axes,
    Constant-node values) only as a count unless ``show_all``."""
    from ..mapping import is_graph_constant

    for side, infos, fmt in (("A", name_map.unmatched_a, name_map.a_format),
                             ("B", name_map.unmatched_b, name_map.b_format)):
        constants = [t for t in infos if is_graph_constant(t, fmt)]
        listed = infos if show_all else [t for t in infos if not is_graph_constant(t, fmt)]
        if listed:
            rows = [(t.name, t.dtype, shape_text(t.shape),
                     "graph constant (not counted)" if is_graph_constant(t, fmt) else "")
                    for t in listed]
            table(f"{len(listed)} only in {side}", ["name", "dtype", "shape", "note"], rows)
        if constants and not show_all:
            console.print(f"{len(constants)} ONNX graph constants only in {side} (shapes, "
                          f"axes, Constant-node values; not counted; --show all lists them)")
    if not name_map.unmatched_a and not name_map.unmatched_b:
        console.print("every tensor paired")
