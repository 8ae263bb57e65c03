"""OpenAI-shaped errors: every failure answers ``{"error": {"message", "type", "param",
"code"}}`` with its HTTP status, never a traceback (the server log keeps that)."""

from __future__ import annotations

import logging

from ..errors import InvalidRequest, KeishikiError
from .engine import EngineFailed, EngineStopped, ServerBusy

log = logging.getLogger("keishiki.serve")

# OpenAI's error types by status
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    403: "invalid_request_error",  # a Host the server does not answer
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_error",
    500: "server_error",
}


class APIError(Exception):
    """An error answered with ``status`` (raise it from a route)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict:
    """The JSON body of an error."""
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict | None = None,
):
    """A JSONResponse with the OpenAI error body."""
    from starlette.responses import JSONResponse

    return JSONResponse(
        error_body(status, message, code, param), status_code=status, headers=headers
    )


def as_api_error(exc: Exception) -> APIError:
    """The APIError for any exception a route lets out."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ServerBusy):
        return APIError(503, str(exc), "server_busy", headers={"Retry-After": "1"})
    if isinstance(exc, EngineStopped):
        return APIError(503, str(exc), "engine_stopped")
    if isinstance(exc, InvalidRequest):
        return APIError(400, str(exc), "invalid_request")
    if isinstance(exc, EngineFailed):
        return APIError(500, str(exc), "engine_failed")
    if isinstance(exc, KeishikiError):
        return APIError(500, str(exc), type(exc).__name__)
    log.exception("internal error")
    return APIError(500, f"internal error: {type(exc).__name__}", "internal_error")


def install(app) -> None:
    """Register the handlers that turn every exception into an OpenAI error body."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def on_validation(_request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            message = f"malformed JSON body: {first.get('ctx', {}).get('error', 'invalid')}"
            where = ""  # (its location is a character offset, not a field)
        else:
            message = f"{where or 'body'}: {first.get('msg', 'invalid value')}"
        return error_response(400, message, "invalid_request", where or None)

    async def on_http(_request, exc: HTTPException):
        return error_response(
            exc.status_code, str(exc.detail), None, headers=getattr(exc, "headers", None)
        )

    async def on_error(_request, exc: Exception):
        api = as_api_error(exc)
        return error_response(api.status, api.message, api.code, api.param, api.headers)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(APIError, on_error)
    app.add_exception_handler(KeishikiError, on_error)
    app.add_exception_handler(Exception, on_error)
