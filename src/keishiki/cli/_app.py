"""The Typer application every ``cmd_*`` module registers its command on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="keishiki",
    help="Identify, inspect, scan, convert and run model files in every format.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring line breaks are reflowed, not kept
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
