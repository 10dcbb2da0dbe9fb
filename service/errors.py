"""The service's error hierarchy and its one mapping to HTTP (DESIGN.md, errors).

Every error response is ``{"error": {"message", "type", "code"}}``. ``type`` is the
class of failure, ``code`` a stable machine-readable string. Responses never carry stack
traces or file paths; 500 is reserved for bugs and says only "internal error".
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base: an error with an HTTP status and an envelope."""

    status: int = 500
    type: str = "internal_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(ServiceError):
    status, type, code = 400, "invalid_request_error", "bad_request"


class InvalidInput(ServiceError):
    status, type, code = 422, "invalid_request_error", "validation_error"


class Unauthorized(ServiceError):
    status, type, code = 401, "authentication_error", "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    status, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(ServiceError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class NotAcceptable(ServiceError):
    status, type, code = 406, "invalid_request_error", "not_acceptable"


class RequestTimeout(ServiceError):
    """The client did not send its request head or body in time (service.protocol)."""

    status, type, code = 408, "invalid_request_error", "request_timeout"


class PayloadTooLarge(ServiceError):
    status, type, code = 413, "invalid_request_error", "body_too_large"


class QueueFull(ServiceError):
    status, type, code = 429, "overloaded_error", "queue_full"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotReady(ServiceError):
    status, type, code = 503, "unavailable_error", "not_ready"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class DeadlineExceeded(ServiceError):
    status, type, code = 504, "timeout_error", "deadline_exceeded"


class ClientGone(ServiceError):
    """The client disconnected; nobody reads the response (499 in access logs only)."""

    status, type, code = 499, "client_closed_request", "client_disconnected"


def envelope(err: ServiceError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "code": err.code}}


def error_response(err: ServiceError) -> JSONResponse:
    return JSONResponse(envelope(err), status_code=err.status, headers=err.headers())


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    return ".".join(parts) or "body"


def validation_to_error(exc: RequestValidationError) -> ServiceError:
    """Name the field and what is wrong; invalid JSON is a 400."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (e.get("ctx") or {}).get("error", "")
        return BadRequest(
            f"request body is not valid JSON: {detail}".rstrip(": "), code="invalid_json"
        )
    msgs = []
    for e in errors[:5]:
        field = _field(tuple(e.get("loc", ())))
        if e.get("type") == "missing" and field == "body":
            msgs.append("request body is required (JSON object)")
            continue
        msgs.append(f"{field}: {e.get('msg', 'invalid')}")
    return InvalidInput("; ".join(msgs) or "invalid request")


def install_handlers(app: FastAPI) -> None:
    """Route every failure through the envelope."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        state = getattr(request.app.state, "service", None)
        if state is not None:
            state.metrics.rejected.labels(reason="invalid").inc()
        return error_response(validation_to_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err: ServiceError
        if exc.status_code == 404:
            err = NotFound("no such route")
        elif exc.status_code == 405:
            err = MethodNotAllowed("method not allowed on this route")
        elif exc.status_code == 400:
            err = BadRequest(str(exc.detail))
        else:
            err = ServiceError(str(exc.detail))
            err.status = exc.status_code
        resp = error_response(err)
        for k, v in (exc.headers or {}).items():  # e.g. Allow on 405 (RFC 9110)
            resp.headers[k] = v
        return resp

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(ServiceError("internal error"))
