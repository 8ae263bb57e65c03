"""The Typer application every ``cmd_*`` module registers its command on, and the options
every command shares (``-q/--quiet``, ``-v/--verbose``: what they set is in
``cli/output.py``)."""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any, Callable

import typer

from .output import OUTPUT, output

QUIET_OPTION = typer.Option(
    False,
    "--quiet",
    "-q",
    help="Only errors and the result: no progress bars, notices or log lines.",
)
VERBOSE_OPTION = typer.Option(
    0,
    "--verbose",
    "-v",
    count=True,
    show_default=False,
    help="More detail on stderr: keishiki's log at INFO (-v) or DEBUG (-vv).",
)


def _with_output_options(f: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``f`` as typer sees it with ``--quiet`` and ``--verbose`` added: they set
    :func:`output`, and reach ``f`` too when it declares a ``quiet``/``verbose`` parameter
    (a plain default there: the options themselves are declared once, here).  With
    ``--verbose``, how long the command took is logged last."""
    signature = inspect.signature(f, eval_str=True)
    takes = {option for option in ("quiet", "verbose") if option in signature.parameters}
    own = [p for option, p in signature.parameters.items() if option not in takes]

    @functools.wraps(f)
    def command(*args: Any, quiet: bool = False, verbose: int = 0, **kwargs: Any) -> Any:
        with output(quiet, verbose):
            given = {"quiet": OUTPUT.quiet, "verbose": OUTPUT.verbose}
            started = time.perf_counter()
            result = f(*args, **kwargs, **{option: given[option] for option in takes})
            if OUTPUT.verbose:
                import logging

                seconds = time.perf_counter() - started
                logging.getLogger("keishiki.cli").info("%s took %.2f s", name, seconds)
            return result

    keyword = inspect.Parameter.KEYWORD_ONLY
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            *own,
            inspect.Parameter("quiet", keyword, default=QUIET_OPTION, annotation=bool),
            inspect.Parameter("verbose", keyword, default=VERBOSE_OPTION, annotation=int),
        ]
    )
    command.__annotations__ = {**f.__annotations__, "quiet": bool, "verbose": int}
    return command


class _Typer(typer.Typer):
    """A Typer whose commands all take ``-q/--quiet`` and ``-v/--verbose``."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        register = super().command(*args, **kwargs)

        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            name = (args[0] if args else kwargs.get("name")) or f.__name__
            register(_with_output_options(f, name))
            return f

        return decorator


app = _Typer(
    name="keishiki",
    help="Identify, inspect, scan, convert and run model files in every format.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # "rich", not "markdown": typer's markdown renderer costs ~30 ms of start-up; help text
    # is reflowed and escaped for this mode by cli/_startup.py
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document for scripts.")


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"keishiki {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print keishiki's version and exit.",
    ),
) -> None:
    """Identify, inspect, scan, convert and run model files in every format."""
