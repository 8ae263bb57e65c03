"""``keishiki formats``: every format keishiki knows and every conversion edge."""

from __future__ import annotations

from ._app import JSON_OPTION, app
from .render import print_json, table


@app.command()
def formats(json_out: bool = JSON_OPTION) -> int:
    """List every format (readable, writable) and every conversion edge with the extra it needs."""
    from .._convert.edges import edges_table, formats_table
    from .render import escape

    fmts, edges = formats_table(), edges_table()
    if json_out:
        print_json({"formats": fmts, "edges": edges}, schema="keishiki.formats/1")
        return 0
    yes = lambda b: "yes" if b else "-"  # noqa: E731
    table(
        "formats",
        ["id", "what", "read", "write"],
        [(f["id"], f["what"], yes(f["readable"]), yes(f["writable"])) for f in fmts],
    )
    table(
        "conversion edges (keishiki convert SRC OUT --to DST)",
        ["from", "to", "needs", "lossless", "what"],
        [
            (
                e["src"],
                e["dst"],
                escape(", ".join(f"keishiki[{x}]" for x in e["extras"]) or "-"),
                yes(e["lossless"]),
                e["description"],
            )
            for e in edges
        ],
    )
    return 0
