"""``keishiki view PATH [PATH_B]``: serve a page about one model, or two compared, on
127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import threading
from pathlib import Path

import typer

from ._app import app
from .render import console


@app.command()
def view(
    # a str, not a Path: hf://ORG/NAME is shown from its headers, read by range (no download)
    path: str = typer.Argument(
        ...,
        metavar="PATH",
        help="Model file or folder (any format), "
        "or hf://ORG/NAME[@REV][/FILE] on the Hub (read by range).",
    ),
    path_b: str = typer.Argument(
        None,
        metavar="PATH_B",
        help="A second model: the page shows how its tensors map to PATH's and compares them.",
    ),
    atol: float = typer.Option(0.0, "--atol", help="With PATH_B: absolute tolerance."),
    rtol: float = typer.Option(0.0, "--rtol", help="With PATH_B: relative tolerance."),
    layers_json: Path = typer.Option(
        None,
        "--layers-json",
        metavar="FILE",
        help="With PATH_B: "
        "show this `keishiki compare A B --layers --json` output "
        "as the layer-by-layer table.",
    ),
    port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 (0 picks a free one)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Only print the URL."),
    quiet: bool = False,  # -q/--quiet: cli/_app.py
) -> int:
    """Show a model in a local web page on 127.0.0.1 (Ctrl-C stops).

    The page shows the summary, metadata, tensors (with statistics of any one tensor on
    request), graph facts, GGUF keys and the scan verdict, with a Netron link for models
    Netron draws as a graph when netron is installed.  With PATH_B: the name mapping,
    each pair's error, unmatched tensors and, given --layers-json, the layer-by-layer table.
    """
    from .._compare.weights import check_tolerances
    from ..errors import InvalidRequest
    from ..inspecting import inspect
    from ..view import ViewServer
    from ..view.payload import compare_payload, read_layers_json

    if not 0 <= port <= 65535:
        raise InvalidRequest(f"--port must be 0..65535, got {port}")
    check_tolerances(atol=atol, rtol=rtol)
    if path_b is None and layers_json is not None:
        raise InvalidRequest("--layers-json needs a second model (keishiki view A B)")
    layers = read_layers_json(layers_json) if layers_json is not None else None
    info = inspect(path)
    other = comparison = None
    if path_b is not None:
        other = inspect(path_b)
        comparison = compare_payload(info, other, atol=atol, rtol=rtol, layers=layers, quiet=quiet)
    try:
        server = ViewServer(info, port=port, other=other, comparison=comparison).start()
    except OSError as exc:
        raise InvalidRequest(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} (try --port 0)"
        ) from None
    from .render import escape

    what = f"{escape(str(path))} ({info.format})"
    if other is not None:
        what += f" vs {escape(str(path_b))} ({other.format})"
    try:  # from here on, Ctrl-C is the normal way out (exit 0), even during the first print
        # one unwrapped line, so that scripts reading stdout find the URL whole
        console.print(
            f"keishiki view: {what} at [bold]{server.url}[/bold]  (Ctrl-C stops)",
            soft_wrap=True,
            highlight=False,
        )
        if not no_browser:
            import webbrowser

            webbrowser.open(server.url)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
