"""cli/render.py's one-line table draws what rich's ``Table`` draws, faster (as rich text with
colour, as a plain string without)."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keishiki.cli import render

ROWS = [
    ["[green]safe[/]", escape("/m/[x]/a.pt"), "zip", "0", "12"],
    ["[bold red]dangerous[/]", "モデル.pt", "pickle", "3", "0"],
    ["", "b", "", "10", ""],
]
# what rich could read as more than text: emoji codes (off in keishiki's console), escaped
# brackets and backslashes, wide and combining characters in a right-justified column
ODD_ROWS = [
    [":smile:", escape("a:b:c [red]x[/red]"), "\\[", "中文", "e\u0301"],
    ["[yellow]unknown[/]", "tab-free \\ back", ":warning:", "1", "モデル"],
]
COLUMNS = ["verdict", "file", "kind", "dangerous", "safe"]


def _console(color: bool, width: int = 200) -> Console:
    return Console(
        file=io.StringIO(),
        width=width,
        highlight=False,
        emoji=False,
        soft_wrap=False,
        color_system="truecolor" if color else None,
        force_terminal=color,
    )


def _with_rich(console, columns, rows, right) -> str:
    t = Table(header_style="bold")
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left", overflow="fold")
    for row in rows:
        t.add_row(*row)
    console.print(t)
    return console.file.getvalue()


def _drawn(console, monkeypatch, columns, rows, right) -> str | None:
    monkeypatch.setattr(render, "console", console)
    drawn = render._one_line_table(columns, rows, right)
    if drawn is None:
        return None
    assert isinstance(drawn, str) != bool(console.color_system)  # a string without colour
    if isinstance(drawn, str):
        console.file.write(drawn)
    else:
        console.print(drawn, end="", soft_wrap=True)
    return console.file.getvalue()


@pytest.mark.parametrize(
    "rows, right",
    [
        (ROWS, {"dangerous", "safe"}),
        (ROWS, set()),
        ([], {"safe"}),
        ([["a", "b", "c", "d", "e"]], {"kind"}),
        (ODD_ROWS, {"dangerous", "safe"}),
        (ODD_ROWS, set()),
    ],
)
def test_same_characters_as_rich(rows, right, monkeypatch):
    expected = _with_rich(_console(False), COLUMNS, rows, right)
    assert _drawn(_console(False), monkeypatch, COLUMNS, rows, right) == expected


def _styles(ansi: str) -> list[tuple[str, str]]:
    """Each character with the styles over it."""
    from rich.text import Text

    text = Text.from_ansi(ansi)
    marks = [[] for _ in text.plain]
    for span in text.spans:
        for i in range(span.start, span.end):
            marks[i].append(str(span.style))
    return [(char, " ".join(sorted(m))) for char, m in zip(text.plain, marks)]


@pytest.mark.parametrize("rows", [ROWS, ODD_ROWS])
def test_same_styles_as_rich(rows, monkeypatch):
    """With colour: each character under the same styles (rich may split the escape codes
    differently)."""
    expected = _with_rich(_console(True), COLUMNS, rows, {"safe"})
    got = _drawn(_console(True), monkeypatch, COLUMNS, rows, {"safe"})
    assert _styles(got) == _styles(expected)


@pytest.mark.parametrize(
    "rows, width",
    [([["two\nlines", "b", "c", "d", "e"]], 200), (ROWS, 30)],
)
def test_rich_draws_what_needs_folding(rows, width, monkeypatch):
    assert _drawn(_console(False, width), monkeypatch, COLUMNS, rows, set()) is None


def test_emoji_codes_print_as_written(capsys):
    """Names from files are printed as escaped markup: rich would turn ``:warning:`` (or the
    ``:b:`` in ``a:b:c``) into an emoji."""
    render.console.print("tensor :warning: a:b:c")
    render.table(None, ["name"], [[":smile:"]])
    out = capsys.readouterr().out
    assert "tensor :warning: a:b:c" in out and ":smile:" in out and "⚠" not in out


ESCAPED = [
    "a\\",
    "a\\\\",
    "a\\\\\\",
    "\\",
    "x[b]\\",
    "\\[b]",
    "[/]\\\\",
    "mid\\dle",
    "[red]x[/red]",
    "",
]


@pytest.mark.parametrize("text", ESCAPED)
@pytest.mark.parametrize("place", ["{}", "[bold]{}[/bold]", "{}[dim] after[/dim]", "before {}"])
def test_escaped_text_shows_as_written(text, place):
    """render.escape gives markup that rich shows as the text itself, trailing backslashes
    included, at the end of the markup or before a tag."""
    from rich.text import Text

    shown = Text.from_markup(place.format(render.escape(text)), emoji=False).plain
    assert shown == place.replace("[bold]", "").replace("[/bold]", "").replace("[dim]", "").replace(
        "[/dim]", ""
    ).format(text)


# names as a file may hold them: markup, escapes, emoji codes, wide and control characters
ODD_NAMES = [
    "/m/[x]/a.pt",
    "a:b:c [red]x[/red].pkl",
    "back\\slash",
    "trailing\\",  # rich's escape() alone: two shown at the end of a cell
    "two\\\\",  # rich's escape() alone: one shown before a tag
    "esc\\[bold].pt",
    ":warning:.pt",
    "モデル/中文.pt",
    "e\u0301.pt",
    "ctl\x1b[31m\u202e.pt",
    "sur\ud800rogate.pkl",  # a lone surrogate read from a file: no encoding can write it
]


def _report():
    from keishiki._scan.findings import FileReport, Finding, ScanReport

    files = []
    for n, name in enumerate(ODD_NAMES):
        severity = ("safe", "unknown", "dangerous")[n % 3]
        rep = FileReport(name, kind="zip" if n % 2 else "pickle")
        for k in range(n % 4):
            rep.add(
                Finding(name, f"m{k}/[data].pkl", k, "GLOBAL", f"os.{name}", severity, "why [b]")
            )
        rep.errors += ["broken"] if n == 3 else []
        files.append(rep)
    return ScanReport(files=files)


@pytest.mark.parametrize("show_safe, max_shown", [(False, 500), (True, 500), (True, 2)])
def test_scan_report_without_rich_prints_what_rich_prints(
    show_safe, max_shown, monkeypatch, capsys
):
    """``keishiki scan`` draws its report without importing rich when stdout has no colour
    (cli/plain.py): the same characters as through rich's console."""
    from keishiki.cli import scanning

    monkeypatch.setattr(scanning, "MAX_SHOWN", max_shown)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(scanning, "no_colour", lambda: True)
    scanning.render_report(_report(), show_safe)
    plain = capsys.readouterr().out
    rich_console = render._Console(
        file=io.StringIO(),
        width=4096,
        highlight=False,
        emoji=False,
        soft_wrap=False,
        color_system=None,
    )
    monkeypatch.setattr(render, "console", rich_console)
    monkeypatch.setattr(scanning, "no_colour", lambda: False)
    scanning.render_report(_report(), show_safe)
    assert plain == rich_console.file.getvalue()
    assert "\\x1b[31m\\u202e" in plain and "[red]x[/red]" in plain and "⚠" not in plain
    assert ("more findings (use --json)" in plain) == (max_shown == 2)


@pytest.mark.parametrize(
    "env, tty, encoding, expected",
    [
        ({}, False, "utf-8", True),
        ({}, True, "utf-8", False),  # a terminal: colour
        ({"COLUMNS": "80"}, False, "utf-8", False),  # a width to fold at: rich folds
        ({"FORCE_COLOR": "1"}, False, "utf-8", False),
        ({"FORCE_COLOR": ""}, False, "utf-8", True),
        ({"TTY_COMPATIBLE": "1"}, False, "utf-8", False),
        ({"TTY_COMPATIBLE": "0"}, True, "utf-8", True),
        ({}, False, "ascii", False),  # rich draws ASCII boxes there
    ],
)
def test_no_colour_says_what_rich_decides(env, tty, encoding, expected, monkeypatch):
    from keishiki.cli import plain

    class Out(io.StringIO):
        def isatty(self):
            return tty

        @property
        def encoding(self):
            return encoding

    out = Out()
    for key in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdout", out)
    assert plain.no_colour() is expected
    if expected:  # rich, asked the same, writes without colour at the pipe's width
        console = Console(file=out, width=None if tty else plain.PIPE_WIDTH)
        assert console.color_system is None and not console.options.ascii_only
