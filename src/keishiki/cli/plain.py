"""Output that needs no rich: control characters spelled out, JSON, and a table drawn as the
characters rich's ``Table`` would write when stdout has no colour (a pipe, a file).

``keishiki scan`` is measured against picklescan's whole process (benchmarks/
bench_startup.py), and importing rich's console and markup costs ~20 ms of it; so ``scan``
prints through this module alone when stdout has no colour, and through rich (``cli/
render.py``, which builds on this module) otherwise.  tests/cli/test_render.py compares the
characters with rich's.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from ..core.jsonable import jsonable

# In a pipe or a file there is no terminal width: rich would fold every line at 80 columns
# and split tensor names and paths in two (breaking `keishiki tensors m | grep`).  Lines are
# left whole there unless COLUMNS says otherwise.
PIPE_WIDTH = 4096

# C0 controls but newline and tab, DEL, the C1 block (CSI 0x9b drives a terminal without
# ESC) and the bidi overrides that reorder what is shown: text from a file (tensor names,
# metadata, pickle globals, file names) is printed with these spelled out, so it can never
# erase a "dangerous" row, hide text or write the clipboard (OSC 52)
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
_CONTROLS.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})
_JSON_CONTROLS = {
    c: f"\\u{c:04x}" for c in [*range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
}
# a file name with bytes that are not UTF-8 holds lone surrogates (Python's surrogateescape):
# shown as the bytes they stand for, which every encoding can write; any other lone
# surrogate (a name read leniently from a file) as its code, since no encoding writes it
_CONTROLS.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})
_CONTROLS.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})
_JSON_CONTROLS.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})

# rich.box.HEAVY_HEAD, the box of rich's default Table: top, header row, header rule, body
# row, bottom, each as (left, fill, divider, right)
_TOP, _HEAD, _HEAD_RULE = ("┏", "━", "┳", "┓"), ("┃", " ", "┃", "┃"), ("┡", "━", "╇", "┩")
_ROW, _BOTTOM = ("│", " ", "│", "│"), ("└", "─", "┴", "┘")


def printable(text: str) -> str:
    """``text`` with terminal control characters spelled out (``\\x1b``), newlines and tabs
    kept."""
    return text.translate(_CONTROLS)


def no_colour() -> bool:
    """Whether rich would write stdout without colour and at :data:`PIPE_WIDTH` (not a
    terminal, no ``COLUMNS``, a UTF encoding): then :func:`draw_table` and plain lines write
    what it would.  Says False when unsure (rich then decides)."""
    import builtins

    out, env = sys.stdout, os.environ
    if out is None or sys.platform == "win32" or "COLUMNS" in env:
        return False
    if hasattr(builtins, "get_ipython"):  # IPython, Jupyter: rich colours its output
        return False
    # rich's Console.is_terminal: TTY_COMPATIBLE, then FORCE_COLOR, then isatty
    if env.get("TTY_COMPATIBLE", "") == "1" or env.get("FORCE_COLOR"):
        return False
    if not (getattr(out, "encoding", None) or "utf-8").lower().startswith("utf"):
        return False  # rich draws ASCII boxes there
    try:
        return env.get("TTY_COMPATIBLE", "") == "0" or not out.isatty()
    except (ValueError, AttributeError):  # closed, or not a file: rich says "no terminal" too
        return True


def cell_len(text: str) -> int:
    """Terminal cells ``text`` takes (a CJK character two, a combining one none)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len as rich_cell_len

    return rich_cell_len(text)


def draw_table(
    columns: list[str], rows: list[list[str]], right: set[str], width: int = PIPE_WIDTH
) -> str | None:
    """The characters of rich's default ``Table`` of ``rows`` (plain, printable text) without
    colour, when every cell is one line and the table fits ``width``; else None (rich folds
    it)."""
    if any("\t" in text or "\n" in text for row in rows for text in row):
        return None
    widths = [cell_len(col) for col in columns]
    lengths = [[cell_len(text) for text in row] for row in rows]
    for row in lengths:
        widths = [max(w, n) for w, n in zip(widths, row)]
    if sum(widths) + 3 * len(widths) + 1 > width:
        return None

    def rule(box: tuple[str, str, str, str]) -> str:
        left, fill, divider, end = box
        return left + divider.join(fill * (w + 2) for w in widths) + end

    def line(row: list[str], sizes: list[int], box: tuple[str, str, str, str]) -> str:
        edge, divider = box[0], box[2]
        cells = []
        for col, text, size, w in zip(columns, row, sizes, widths):
            pad = " " * (w - size)
            cells.append(f" {pad}{text} " if col in right else f" {text}{pad} ")
        return edge + divider.join(cells) + box[3]

    lines = [rule(_TOP), line(columns, [cell_len(c) for c in columns], _HEAD), rule(_HEAD_RULE)]
    lines += [line(row, sizes, _ROW) for row, sizes in zip(rows, lengths)]
    lines.append(rule(_BOTTOM))
    return "\n".join(lines) + "\n"


def silence_stdout() -> None:
    """After the reader went away (``keishiki info m | head -1``): point stdout at /dev/null
    so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file (tests capture stdout in memory)


def write_text(text: str) -> None:
    """Write raw text to stdout now (streamed tokens, JSON, plain tables); a closed pipe
    ends quietly."""
    if sys.stdout is None:  # started with stdout closed: nowhere to write
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        # without errno: click/typer turn an EPIPE OSError into exit 1 ("a finding" here);
        # the CLI maps this one to 0
        raise BrokenPipeError from None


def print_json(obj: Any, schema: str | None = None) -> None:
    """Print ``obj`` as indented JSON on stdout; ``schema`` (``keishiki.<command>/<version>``,
    listed in docs/json.md) goes first, so scripts can tell a shape they know."""
    if schema is not None:
        obj = {"schema": schema, **obj}
    text = json.dumps(jsonable(obj), indent=2, ensure_ascii=False)
    # json escapes C0 controls itself; C1 and bidi controls become \u escapes too (valid JSON)
    write_text(text.translate(_JSON_CONTROLS) + "\n")
