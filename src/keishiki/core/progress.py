"""A progress bar on long work: shown on a terminal, silent with --quiet or when piped."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Protocol


class Advance(Protocol):
    def __call__(self, n: float = 1, description: str | None = None) -> None: ...


def _noop(n: float = 1, description: str | None = None) -> None:
    return None


@contextmanager
def progress(
    total: float | None, description: str, quiet: bool = False, unit_bytes: bool = False
) -> Iterator[Advance]:
    """Yield ``advance(n, description=None)``; draws a rich bar on stderr when it is a TTY."""
    if quiet or not sys.stderr.isatty():
        yield _noop
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if unit_bytes else [MofNCompleteColumn()]
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: float = 1, description: str | None = None) -> None:
            if description is not None:
                bar.update(task, advance=n, description=description)
            else:
                bar.advance(task, n)

        yield advance
