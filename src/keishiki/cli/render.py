"""One renderer for human output (rich tables) and ``--json``."""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any, Iterable

from rich.console import Console
from rich.markup import escape as _rich_escape

from .plain import (  # noqa: F401 - print_json, write_text: the commands import them from here
    PIPE_WIDTH,
    cell_len,
    draw_table,
    print_json,
    printable,
    silence_stdout,
    write_text,
)

if TYPE_CHECKING:  # rich.table costs ~5 ms of start-up: imported where a Table is built
    from rich.table import Table


_RULE_WIDTH = 100  # a rule spans the whole width: in a pipe, a readable fixed width instead


class _Console(Console):
    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 - rich's name
        """rich's print, with control characters in plain strings spelled out (tables built
        here are cleaned cell by cell: :func:`table`, :func:`kv_table`)."""
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)

    def on_broken_pipe(self) -> None:
        # rich would raise SystemExit(1), and 1 means "a finding" in keishiki's exit codes;
        # the CLI maps BrokenPipeError to 0 like `cat file | head` does
        silence_stdout()
        raise BrokenPipeError  # without errno: see plain.write_text

    def rule(
        self,
        title: Any = "",
        *,
        characters: str = "─",
        style: Any = "rule.line",
        align: Any = "center",
    ) -> None:
        from rich.rule import Rule

        self.print(
            Rule(title, characters=characters, style=style, align=align),
            width=min(self.width, _RULE_WIDTH) if self.width >= PIPE_WIDTH else None,
        )


console = _Console(
    highlight=False,
    emoji=False,  # text from files is escaped markup: a tensor named ":warning:" stays as it is
    soft_wrap=False,
    # (sys.stdout is None when the process starts with its stdout closed: `scan x >&-`)
    width=None
    if (sys.stdout is not None and sys.stdout.isatty()) or os.environ.get("COLUMNS")
    else PIPE_WIDTH,
)


def escape(text: str) -> str:
    """``text`` as rich markup that shows exactly ``text``, wherever it is placed.

    rich's ``escape`` protects ``[tag]``-like text and doubles one trailing backslash, so
    that a tag the caller puts after it stays a tag; but at the end of the markup (a table
    cell, the end of a line) rich then shows both backslashes, and a run of two is not
    doubled at all (one shows before a tag).  So the whole trailing run is doubled here
    and closed with an empty span: rich shows the run as written, tag after it or not."""
    body = text.rstrip("\\")
    run = len(text) - len(body)
    if not run:
        return _rich_escape(text)
    return _rich_escape(body) + "\\" * (2 * run) + "[none][/none]"


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: int | None) -> str:
    """1234567 -> '1.23M (1,234,567)'."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix} ({n:,})"
    return f"{n:,}"


def short(value: Any, limit: int = 100) -> str:
    """A one-line rendering of any value, cut at ``limit`` characters."""
    # items get 60 characters: class names like torch.nn.modules.activation.ReLU stay whole
    if isinstance(value, dict):
        text = ", ".join(
            f"{k if k != '' else chr(34) * 2}={short(v, 60)}" for k, v in value.items()
        )
    elif isinstance(value, (list, tuple)):
        text = ", ".join(short(v, 60) for v in value[:12])
        if len(value) > 12:
            text += f", … ({len(value)} items)"
    else:
        text = str(value)
    text = printable(text.replace("\n", " "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: Any) -> str:
    """A key/value table cell: short lists of scalars one per line (ONNX inputs, file
    lists), everything else on one shortened line."""
    if isinstance(value, str):
        return printable(value)
    if (
        isinstance(value, (list, tuple))
        and 1 < len(value) <= 16
        and all(isinstance(v, (str, int, float)) for v in value)
    ):
        return "\n".join(short(v, 160) for v in value)
    return short(value)


def kv_table(title: str | None, rows: Iterable[tuple[str, Any]]) -> Table:
    """A two-column key/value table (rows with value None are skipped).

    Keys and values are text from the model file (metadata, names, paths): they are
    escaped, so a value like ``[/x]`` prints as itself instead of being read as rich markup.
    """
    from rich.table import Table

    table = Table(
        title=title and escape(title),
        show_header=False,
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        if value is None or value == {} or value == []:
            continue
        table.add_row(escape(printable(str(key))), escape(_cell(value)))
    return table


def section(title: str, data: dict[str, Any]) -> None:
    """Print a dict as a titled key/value table (nested values shortened to one line)."""
    console.print(f"\n[bold underline]{escape(title)}[/bold underline]")
    console.print(kv_table(None, data.items()))


def table(
    title: str | None,
    columns: list[str],
    rows: Iterable[Iterable[Any]],
    justify_right: Iterable[str] = (),
) -> None:
    """Print a simple table with headers.

    Cells are rich markup (callers style verdicts): escape text that comes from a file
    with :func:`escape` before passing it.
    """
    right = set(justify_right)
    if title:
        # as its own line: a Table title wraps at the table's width, splitting long paths
        console.print(printable(title), soft_wrap=True)
    cells = [[printable(v) if isinstance(v, str) else short(v) for v in row] for row in rows]
    drawn = _one_line_table(columns, cells, right)
    if isinstance(drawn, str):  # no colour: the characters rich would write, written as such
        try:
            console.file.write(drawn)
            console.file.flush()
        except BrokenPipeError:
            console.on_broken_pipe()
        return
    if drawn is not None:
        console.print(drawn, end="", soft_wrap=True)
        return
    from rich.table import Table

    t = Table(header_style="bold")
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left", overflow="fold")
    for row in cells:
        t.add_row(*row)
    console.print(t)


def _one_line_table(columns: list[str], cells: list[list[str]], right: set[str]) -> Any:
    """The table :func:`table` draws with rich's ``Table``, when no cell needs folding (one
    line each, and the whole fits the width): as one ``Text``, or without colour (a pipe, a
    file) as the string rich would write; else None.

    rich lays a table out cell by cell: 90 ms for the 200 rows of a folder scan, a third of
    ``keishiki scan``'s run; this draws the same characters in ~13 ms with colour, ~3 ms
    without (tests/cli/test_render.py compares them)."""
    from rich.box import HEAVY_HEAD
    from rich.text import Text

    if console.color_system is None and not (console.legacy_windows or console.options.ascii_only):
        plain = [[_plain(cell) for cell in row] for row in cells]
        if not any("\t" in text or "\n" in text for row in plain for text in row):
            return draw_table(columns, plain, right, console.width)

    texts = [[Text.from_markup(cell, emoji=False) for cell in row] for row in cells]
    if any("\n" in text.plain for row in texts for text in row):
        return None
    widths = _widths(columns, [[text.plain for text in row] for row in texts])
    if widths is None:
        return None
    box = HEAVY_HEAD.substitute(console.options, safe=console.safe_box)
    padded = [w + 2 for w in widths]
    out = Text(box.get_top(padded) + "\n")

    def add_row(row: list[Any], edge: str, divider: str, style: str = "") -> None:
        out.append(edge)
        for n, (col, text, width) in enumerate(zip(columns, row, widths)):
            pad = " " * (width - text.cell_len)
            out.append(" ", style)
            if col in right:
                out.append(pad, style)
            out.append_text(text)
            if col not in right:
                out.append(pad, style)
            out.append(" ", style)
            out.append(divider if n < len(columns) - 1 else edge)
        out.append("\n")

    add_row([Text(col, style="bold") for col in columns], box.head_left, box.head_vertical, "bold")
    out.append(box.get_row(padded, "head") + "\n")
    for row in texts:
        add_row(row, box.mid_left, box.mid_vertical)
    out.append(box.get_bottom(padded) + "\n")
    return out


def _widths(columns: list[str], plain: list[list[str]]) -> list[int] | None:
    """Each column's width in terminal cells, or None when the table is wider than the
    console."""
    widths = [cell_len(col) for col in columns]
    for row in plain:
        widths = [max(w, cell_len(text)) for w, text in zip(widths, row)]
    return None if sum(widths) + 3 * len(widths) + 1 > console.width else widths


@functools.lru_cache(maxsize=1024)
def _plain(cell: str) -> str:
    """The characters rich shows for the markup ``cell`` (``[style]`` tags and ``\\[``
    escapes: a cell without a bracket is itself)."""
    if "[" not in cell:
        return cell
    from rich.text import Text

    return Text.from_markup(cell, emoji=False).plain
