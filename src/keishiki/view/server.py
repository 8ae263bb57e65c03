"""A tiny local web server for one model, or two side by side: static page plus a JSON API,
loopback only.

Routes (GET/HEAD only):
  ``/``, ``/index.html``, ``/view.js``   the page (``static/``: fixed names, nothing else)
  ``/api/info[?side=b]``  ``inspect(path).to_dict(with_tensors=True)`` plus ``view`` facts
                          (Netron link offered, statistics available or why not)
  ``/api/compare``        ``compare --json`` of A and B, the layer table's JSON when given
                          (404 for one model)
  ``/api/stats?side=a&name=N``  statistics of one tensor, computed on request
                          (:mod:`keishiki.view.stats`; errors as ``{"error": ...}``)
  ``/netron[?side=b]``    starts Netron on another loopback port for that model (when the
                          ``netron`` package is installed and Netron draws it as a graph)
                          and redirects there

The server binds 127.0.0.1 and nothing else, and answers only requests whose ``Host``
header names the loopback address (a web page elsewhere cannot read it through DNS
rebinding).  It serves no files but its own: static names are looked up in a fixed table,
and the models' paths are fixed at start.
"""

from __future__ import annotations

import json
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..core.jsonable import jsonable
from ..core.model import ModelInfo
from ..errors import KeishikiError
from . import netron
from .payload import model_payload
from .stats import MAX_BYTES, MAX_ELEMENTS

HOST = "127.0.0.1"
ALLOWED_HOSTS = ("127.0.0.1", "localhost")
# route -> (file in static/, content type): the only files the server ever reads
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
}
JSON_TYPE = "application/json; charset=utf-8"


def to_json(obj: Any) -> bytes:
    """JSON bytes for the page: numpy scalars as numbers, bytes as text, NaN/inf as strings."""
    return json.dumps(jsonable(obj), ensure_ascii=False).encode("utf-8")


def static_file(name: str) -> bytes:
    """One of the page's files shipped in ``keishiki/view/static/`` (a name from
    :data:`STATIC`)."""
    return resources.files("keishiki.view").joinpath("static", name).read_bytes()


def page_html() -> bytes:
    """The page's HTML (``static/index.html``); its script is ``static/view.js``."""
    return static_file("index.html")


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ViewServer:
    """Serve one model's page, or two models' comparison, on ``http://127.0.0.1:<port>/``
    from a background thread.

    >>> server = ViewServer(keishiki.inspect("model.onnx")).start()
    >>> server.url
    'http://127.0.0.1:53211/'
    >>> server.stop()

    Args:
        info: the inspected model (A, the reference, when comparing).
        port: TCP port; 0 picks a free one.
        other: model B, shown against A (``comparison`` then holds their comparison).
        comparison: :func:`keishiki.view.payload.compare_payload` of A and B.
        max_stats_bytes, max_stats_elements: bounds of one statistics request (see
            :func:`keishiki.view.stats.tensor_stats`).
    """

    def __init__(
        self,
        info: ModelInfo,
        port: int = 0,
        *,
        other: ModelInfo | None = None,
        comparison: dict[str, Any] | None = None,
        max_stats_bytes: int = MAX_BYTES,
        max_stats_elements: int = MAX_ELEMENTS,
    ):
        self.models = {"a": info} if other is None else {"a": info, "b": other}
        self.payloads = {side: model_payload(m) for side, m in self.models.items()}
        for side, payload in self.payloads.items():
            payload["view"].update(side=side, compare=other is not None)
        self.comparison = comparison
        self.stats_limits = {"max_bytes": max_stats_bytes, "max_elements": max_stats_elements}
        self._netron: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()  # one tensor in memory at a time
        self._httpd = ThreadingHTTPServer((HOST, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def info(self) -> ModelInfo:
        return self.models["a"]

    @property
    def payload(self) -> dict[str, Any]:
        """Model A's ``/api/info`` answer."""
        return self.payloads["a"]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> ViewServer:
        """Start serving in a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="keishiki-view", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (and Netron, if it was started)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._netron:
            import netron as netron_pkg

            for address in self._netron.values():
                netron_pkg.stop(address)
            self._netron.clear()

    def netron_url(self, side: str = "a") -> str | None:
        """Start Netron for model ``side`` on a free loopback port (once); its URL, or None
        when Netron is not installed or draws no graph for that model."""
        payload = self.payloads.get(side)
        if payload is None or not payload["view"]["netron"]:
            return None
        with self._lock:
            if side not in self._netron:
                import netron as netron_pkg

                self._netron[side] = tuple(
                    netron_pkg.start(
                        netron.target(self.models[side]), address=(HOST, free_port()), browse=False
                    )
                )
        host, port = self._netron[side]
        return f"http://{host}:{port}/"

    def stats(self, side: str, name: str) -> dict[str, Any]:
        """Statistics of tensor ``name`` of model ``side`` (see ``/api/stats``)."""
        from .stats import tensor_stats

        with self._stats_lock:
            out = tensor_stats(self.models[side], name, **self.stats_limits)
        out["side"] = side
        return out


def _handler_for(server: ViewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "keishiki-view"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: no access log
            return

        def _send(
            self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            # the page runs its own script only, and reaches nothing but this server
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            )
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, to_json({"error": message}), JSON_TYPE)

        def _host_ok(self) -> bool:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            return host in ALLOWED_HOSTS

        def do_GET(self) -> None:
            if not self._host_ok():
                self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", "text/plain")
                return
            if self.headers.get("Sec-Fetch-Site", "none") not in ("same-origin", "none") and (
                self.path.startswith(("/api/", "/netron"))
            ):
                # a request another page made (an <img> pointing at /netron would start
                # Netron, one at /api/stats load tensors): browsers say so; the view's
                # own page asks same-origin, a typed address none (a link to the page
                # itself, from a notebook say, is welcome: the page reads nothing)
                self._send(HTTPStatus.FORBIDDEN, b"cross-site request\n", "text/plain")
                return
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            side = query.get("side", "a")
            route = parts.path
            if route in STATIC:
                name, ctype = STATIC[route]
                self._send(HTTPStatus.OK, static_file(name), ctype)
            elif route == "/favicon.ico":  # browsers ask; no icon, and no 404 in the console
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif side not in server.models:
                self._error(
                    HTTPStatus.NOT_FOUND, f"no model {side!r} (sides: {', '.join(server.models)})"
                )
            elif route == "/api/info":
                self._send(HTTPStatus.OK, to_json(server.payloads[side]), JSON_TYPE)
            elif route == "/api/compare" and server.comparison is not None:
                self._send(HTTPStatus.OK, to_json(server.comparison), JSON_TYPE)
            elif route == "/api/stats":
                self._stats(side, query.get("name"))
            elif route == "/netron":
                self._netron(side)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _stats(self, side: str, name: str | None) -> None:
            if name is None:
                self._error(HTTPStatus.BAD_REQUEST, "name= (a tensor name) is required")
                return
            try:
                body = to_json(server.stats(side, name))
            except KeishikiError as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
                return
            except Exception as exc:  # a reader's bug: an answer, not a dropped connection
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
                return
            self._send(HTTPStatus.OK, body, JSON_TYPE)

        def _netron(self, side: str) -> None:
            url = server.netron_url(side)
            if url is None:
                self._send(
                    HTTPStatus.NOT_FOUND,
                    b"netron is not installed (pip install "
                    b"netron) or draws no graph for this model\n",
                    "text/plain",
                )
            else:
                self._send(HTTPStatus.FOUND, b"", "text/plain", {"Location": url})

        do_HEAD = do_GET

    return Handler
