"""The ASGI middleware in front of every route: the Host header (on a loopback server without
an API key), the API key and the request body size.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which buffers streaming responses
and hides a client's disconnect from them.  Both checks run before any route reads the body.
"""

from __future__ import annotations

import hmac
import json

from .errors import error_body

OPEN_PATHS = ("/health", "/metrics")  # what a load balancer or Prometheus polls (as vLLM)
LOOPBACK_NAMES = frozenset((b"127.0.0.1", b"localhost", b"::1"))


class Guard:
    """Refuse requests addressed to another name than a loopback one when ``local_only``
    (403: DNS rebinding), requests without ``Authorization: Bearer <api_key>`` (401) and
    bodies over ``max_body_bytes`` (413), with OpenAI-shaped errors."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, local_only: bool = False):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.local_only = local_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.local_only and not _names_this_machine(scope):
            return await _reply(
                send,
                403,
                "this server answers only requests addressed to 127.0.0.1, localhost or "
                "[::1] (Host header)",
                "forbidden_host",
            )
        if self.expected is not None and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            # compare_digest: the time taken does not tell how much of the key was right
            if not hmac.compare_digest(given, self.expected):
                return await _reply(
                    send,
                    401,
                    "invalid API key: send Authorization: Bearer <key>",
                    "invalid_api_key",
                    [(b"www-authenticate", b"Bearer")],
                )
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _too_large(send, self.max_body_bytes)
        body = bytearray()
        while True:  # read it all (bounded), then hand it on as one message
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return await _too_large(send, self.max_body_bytes)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # then the disconnect, when it comes

        return await self.app(scope, replay, send)


def _names_this_machine(scope) -> bool:
    """The request's ``Host`` is a loopback name (with or without a port), and given once."""
    hosts = [value for name, value in scope["headers"] if name == b"host"]
    if len(hosts) != 1:
        return False
    host = hosts[0].strip()
    if host.startswith(b"["):  # [::1]:8000
        host = host[1 : host.find(b"]")] if b"]" in host else b""
    elif host.count(b":") == 1:
        host = host.split(b":")[0]
    return host.lower() in LOOPBACK_NAMES


async def _too_large(send, limit: int):
    return await _reply(send, 413, f"request body larger than {limit} bytes", "request_too_large")


async def _reply(send, status: int, message: str, code: str, headers=()):
    body = json.dumps(error_body(status, message, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
