"""``keishiki view PATH``: serve a page about one model on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import threading

import typer

from ._app import app
from .render import console


@app.command()
def view(
    # a str, not a Path: hf://ORG/NAME is shown from its headers, read by range (no download)
    path: str = typer.Argument(..., metavar="PATH", help="Model file or folder (any format), "
                               "or hf://ORG/NAME[@REV][/FILE] on the Hub (read by range)."),
    port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 (0 picks a free one)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Only print the URL."),
) -> int:
    """Show a model in a local web page on 127.0.0.1 (Ctrl-C stops).

    The page shows the summary, metadata, tensors, graph facts, GGUF keys and the scan
    verdict, with a Netron link for graphs when netron is installed.
    """
    from ..errors import InvalidRequest
    from ..formats import inspect
    from ..view import ViewServer

    if not 0 <= port <= 65535:
        raise InvalidRequest(f"--port must be 0..65535, got {port}")
    info = inspect(path)
    try:
        server = ViewServer(info, port=port).start()
    except OSError as exc:
        raise InvalidRequest(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} "
                             f"(try --port 0)") from None
    from rich.markup import escape

    try:  # from here on, Ctrl-C is the normal way out (exit 0), even during the first print
        # one unwrapped line, so that scripts reading stdout find the URL whole
        console.print(f"keishiki view: {escape(str(path))} ({info.format}) at "
                      f"[bold]{server.url}[/bold]  (Ctrl-C stops)", soft_wrap=True,
                      highlight=False)
        if not no_browser:
            import webbrowser

            webbrowser.open(server.url)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
