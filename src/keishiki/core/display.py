"""How keishiki's result objects show themselves: a one-line ``repr``, and a table for rich
(``__rich__``) and for Jupyter (``_repr_html_``).

A :class:`~keishiki.ModelInfo` holds hundreds of tensors and its dataclass ``repr`` runs to
kilobytes on one line; a notebook cell or a REPL wants what ``keishiki info`` shows first.
Each class builds one :class:`View` (a title, key/value fields, and optionally a table of
rows with the first :data:`MAX_ROWS` shown) and this module renders it three ways.  Text
from a file (tensor names, metadata, paths) is escaped in every rendering: HTML-escaped for
Jupyter, plain text (never read as markup) for rich, control characters written as escapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Group

MAX_ROWS = 20  # rows of a View's table shown before "… N more"


def count(n: int) -> str:
    """6_738_415_616 -> '6.7B', 1234 -> '1.2K', 12 -> '12' (parameter and tensor counts)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def exact(n: int, short: str) -> str:
    """``short`` followed by the exact number when it rounds: '6.7B (6,738,415,616)'."""
    return short if short in (str(n), f"{n} B") else f"{short} ({n:,})"


def size(n: int) -> str:
    """1536 -> '1.5 KiB' (file and tensor sizes)."""
    if abs(n) < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def clip(value: object, limit: int = 100) -> str:
    """``str(value)`` on one line, cut at ``limit`` characters (a long metadata value)."""
    text = str(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(text: str) -> str:
    """``text`` with control characters (a name holding ``\\x1b[2J``) written as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Raw(str):
    """A value :func:`short_repr` shows without quotes (a formatted count or size)."""


def short_repr(name: str, fields: Iterable[tuple[str, object]]) -> str:
    """``Name(key=value, ...)`` on one line: values as ``repr`` writes them, :class:`Raw`
    text as it is (``params=6.7B``)."""
    parts = [f"{k}={v if isinstance(v, Raw) else repr(v)}" for k, v in fields]
    return f"{name}({', '.join(parts)})"


@dataclass
class View:
    """What a result object shows in rich and Jupyter."""

    title: str
    fields: Sequence[tuple[str, str]] = ()
    columns: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    n_rows: int | None = None  # rows there are in all (None: len(rows))

    @property
    def more(self) -> int:
        """Rows left out of :attr:`rows`."""
        return (self.n_rows if self.n_rows is not None else len(self.rows)) - len(self.rows)

    def html(self) -> str:
        """An HTML fragment for Jupyter: the title, a key/value table, the rows' table."""
        from html import escape as e  # only for Jupyter: html.entities is ~1.5 ms of start-up

        out = [f"<div><strong>{e(self.title)}</strong>"]
        if self.fields:
            out.append("<table>")
            out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in self.fields]
            out.append("</table>")
        if self.columns:
            out.append("<table><thead><tr>")
            out += [f"<th>{e(c)}</th>" for c in self.columns]
            out.append("</tr></thead><tbody>")
            for row in self.rows:
                out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
            if self.more:
                out.append(f"<p>… {self.more} more</p>")
        out.append("</div>")
        return "\n".join(out)

    def rich(self) -> Group:
        """A rich renderable: the title, the key/value table, then the rows' table."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        def cell(text: str) -> Text:  # a Text is never read as markup: "[/x]" stays itself
            return Text(printable(text))

        # the title on its own line: a Table title wraps at the table's width (long paths)
        parts: list[Table | Text] = [Text(printable(self.title), style="bold")]
        if self.fields:
            fields = Table(show_header=False, box=None)
            fields.add_column(style="bold cyan", no_wrap=True)
            fields.add_column(overflow="fold")
            for key, value in self.fields:
                fields.add_row(cell(key), cell(value))
            parts.append(fields)
        if self.columns:
            rows = Table(header_style="bold")
            for column in self.columns:
                rows.add_column(cell(column), overflow="fold")
            for row in self.rows:
                rows.add_row(*(cell(c) for c in row))
            parts.append(rows)
            if self.more:
                parts.append(Text(f"… {self.more} more"))
        return Group(*parts)


class Shown:
    """Mixin: ``__rich__`` and ``_repr_html_`` from the class's :meth:`_view`.  (``__repr__``
    stays in each class's own body: ``@dataclass`` would replace one inherited from here.)"""

    def _view(self) -> View:
        raise NotImplementedError

    def __rich__(self) -> Group:
        return self._view().rich()

    def _repr_html_(self) -> str:
        return self._view().html()
