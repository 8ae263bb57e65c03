"""A tiny local web server for one model: the static page plus a JSON API, loopback only.

Routes (GET only):
  ``/``             the page (``static/index.html``: one self-contained HTML+JS file)
  ``/api/info``     ``inspect(path).to_dict(with_tensors=True)`` plus ``view`` facts
                    (whether the Netron link is offered)
  ``/netron``       starts Netron on another loopback port for this model (when the
                    ``netron`` package is installed) and redirects there

The server binds 127.0.0.1 and nothing else, and answers only requests whose ``Host``
header names the loopback address (a web page elsewhere cannot read it through DNS
rebinding).  It serves no files but its own page: the model's path is fixed at start.
"""

from __future__ import annotations

import json
import math
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from ..core.model import ModelInfo

HOST = "127.0.0.1"
NETRON_FORMATS = {"onnx", "torchscript", "keras-h5", "keras", "tflite", "coreml", "pytorch",
                  "safetensors", "gguf", "torch7", "numpy", "tensorflow-savedmodel"}
ALLOWED_HOSTS = ("127.0.0.1", "localhost")


def to_json(obj: Any) -> bytes:
    """JSON bytes for the page: numpy scalars as numbers, bytes as text, NaN/inf as strings."""

    def default(value: Any) -> Any:
        if hasattr(value, "to_dict"):
            return value.to_dict()
        if isinstance(value, (set, frozenset, tuple)):
            return list(value)
        if isinstance(value, bytes):
            return value.decode("utf-8", "backslashreplace")
        if hasattr(value, "item"):
            return value.item()
        return str(value)

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {str(k): finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    plain = json.loads(json.dumps(obj, default=default))
    return json.dumps(finite(plain), ensure_ascii=False).encode("utf-8")


def page_html() -> bytes:
    """The static page shipped in ``keishiki/view/static/index.html``."""
    return resources.files("keishiki.view").joinpath("static/index.html").read_bytes()


def netron_available() -> bool:
    from .._optional import available

    return available("netron")


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ViewServer:
    """Serve one model's page on ``http://127.0.0.1:<port>/`` from a background thread.

    >>> server = ViewServer(keishiki.inspect("model.onnx")).start()
    >>> server.url
    'http://127.0.0.1:53211/'
    >>> server.stop()

    Args:
        info: the inspected model (its ``path`` is what Netron would open).
        port: TCP port; 0 picks a free one.
    """

    def __init__(self, info: ModelInfo, port: int = 0):
        self.info = info
        self.payload = info.to_dict(with_tensors=True)
        self.payload["view"] = {"netron": netron_available() and info.format in NETRON_FORMATS}
        self._netron_address: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((HOST, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> "ViewServer":
        """Start serving in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        name="keishiki-view",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (and Netron, if it was started)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._netron_address is not None:
            import netron

            netron.stop(self._netron_address)
            self._netron_address = None

    def netron_url(self) -> str | None:
        """Start Netron for this model on a free loopback port (once); its URL, or None."""
        if not self.payload["view"]["netron"]:
            return None
        with self._lock:
            if self._netron_address is None:
                import netron

                self._netron_address = tuple(netron.start(
                    str(self.info.path), address=(HOST, free_port()), browse=False))
        return f"http://{self._netron_address[0]}:{self._netron_address[1]}/"


def _handler_for(server: ViewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "keishiki-view"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: no access log
            return

        def _send(self, status: int, body: bytes, content_type: str,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _host_ok(self) -> bool:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            return host in ALLOWED_HOSTS

        def do_GET(self) -> None:
            if not self._host_ok():
                self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", "text/plain")
                return
            route = self.path.split("?", 1)[0]
            if route in ("/", "/index.html"):
                self._send(HTTPStatus.OK, page_html(), "text/html; charset=utf-8")
            elif route == "/api/info":
                self._send(HTTPStatus.OK, to_json(server.payload),
                           "application/json; charset=utf-8")
            elif route == "/netron":
                url = server.netron_url()
                if url is None:
                    self._send(HTTPStatus.NOT_FOUND, b"netron is not installed "
                               b"(pip install netron) or cannot open this format\n",
                               "text/plain")
                else:
                    self._send(HTTPStatus.FOUND, b"", "text/plain", {"Location": url})
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        do_HEAD = do_GET

    return Handler
