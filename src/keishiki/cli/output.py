"""How much the running command says (``-q/--quiet``, ``-v/--verbose``), without typer:
``cli/_app.py`` gives every command the two options, ``cli/fast.py`` sets ``--quiet`` itself."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Output:
    """How much the running command says: ``quiet`` (only errors and the result) or
    ``verbose`` (1: the keishiki log at INFO, 2: at DEBUG)."""

    quiet: bool = False
    verbose: int = 0


OUTPUT = Output()


@contextlib.contextmanager
def output(quiet: bool, verbose: int) -> Iterator[None]:
    """Set :data:`OUTPUT`, the ``keishiki`` logger and (with ``quiet``) Python's warnings for
    one command, and put them back after it (tests run many commands in one process)."""
    previous = (OUTPUT.quiet, OUTPUT.verbose)
    OUTPUT.quiet, OUTPUT.verbose = quiet, 0 if quiet else verbose
    try:
        if not (quiet or verbose):  # (logging costs start-up: imported only when asked for)
            yield
            return
        with _log_level(quiet, verbose):
            yield
    finally:
        OUTPUT.quiet, OUTPUT.verbose = previous


@contextlib.contextmanager
def _log_level(quiet: bool, verbose: int) -> Iterator[None]:
    import logging
    import warnings

    log = logging.getLogger("keishiki")
    level = log.level
    with contextlib.ExitStack() as stack:
        if quiet:  # keishiki's warnings and the libraries' (torch, transformers: on stderr)
            log.setLevel(logging.ERROR)
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
        else:
            log.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter(
                    "keishiki: %(message)s" if verbose == 1 else "keishiki: %(name)s: %(message)s"
                )
            )
            log.addHandler(handler)
            stack.callback(log.removeHandler, handler)
        stack.callback(log.setLevel, level)
        yield
