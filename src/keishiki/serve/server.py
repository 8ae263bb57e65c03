"""Listening: bind the socket first (a port in use is one line, not uvicorn's exit), then
run uvicorn on it, in the foreground (``keishiki serve``) or on a thread (tests,
benchmarks)."""

from __future__ import annotations

import socket
import threading
import time

from .._optional import require
from ..errors import InvalidRequest


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        InvalidRequest: the address cannot be bound (in use, not this machine's, no rights).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InvalidRequest(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


DRAIN_SECONDS = 5.0  # what runs at Ctrl-C has this long to finish, then ends with an error
_CUT_SECONDS = DRAIN_SECONDS + 5  # uvicorn cancels what is left (the errors are sent by then)


def _server(app, log_level: str):
    uvicorn = require("uvicorn", extra="serve", purpose="serve models over HTTP")
    from sse_starlette.sse import AppStatus

    # sse-starlette ends every stream at the signal, unfinished and without [DONE]: the
    # streams drain with the other requests instead (they end when their request does);
    # (sse-starlette before 3.x has no switch: its streams end at the signal)
    disable = getattr(AppStatus, "disable_automatic_graceful_drain", None)
    if disable is not None:
        disable()

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            # uvicorn stops listening, then waits for the requests in flight: the engine
            # refuses new ones, and ends what still runs after DRAIN_SECONDS with an error
            # response (503) before uvicorn cancels (a cut stream, a plain-text 500)
            engine = getattr(getattr(getattr(app, "state", None), "ctx", None), "engine", None)
            if engine is not None:
                engine.drain(DRAIN_SECONDS)
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=_CUT_SECONDS,
        access_log=log_level in ("debug", "trace"),
    )
    return Server(config)


def serve_forever(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C / SIGTERM (uvicorn drains the requests in
    flight, then re-raises the signal: Ctrl-C is how a server is stopped, not an error)."""
    try:
        _server(app, log_level).run(sockets=[sock])
    except KeyboardInterrupt:
        pass


class Running:
    """A server on a background thread: ``url`` is its base (``http://127.0.0.1:PORT``).

    >>> with Running(app) as server:
    ...     OpenAI(base_url=server.url + "/v1", api_key="-")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = _server(app, log_level)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.sock]},
            name="keishiki-serve",
            daemon=True,
        )

    def __enter__(self) -> "Running":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
