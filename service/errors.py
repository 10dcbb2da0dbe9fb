"""The service's error hierarchy and its one mapping to HTTP (docs/service.md, errors).

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

    param: str | None = None  # the offending request parameter (OpenAI's error shape)

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param

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


class OpenAIBadRequest(ServiceError):
    """400 of the OpenAI-compatible route: ``{"error": {"message", "type", "param", "code"}}``."""

    status, type, code = 400, "invalid_request_error", "invalid_value"


class ModelNotFound(ServiceError):
    """404 as the OpenAI API answers for a model it does not serve."""

    status, type, code = 404, "invalid_request_error", "model_not_found"


def envelope(err: ServiceError, *, openai: bool = False) -> dict[str, Any]:
    """The error body; ``openai`` adds ``param`` (null when no parameter is at fault)."""
    body: dict[str, Any] = {"message": err.message, "type": err.type, "code": err.code}
    if openai:
        body["param"] = err.param
    return {"error": body}


def error_response(err: ServiceError, *, openai: bool = False) -> JSONResponse:
    return JSONResponse(envelope(err, openai=openai), status_code=err.status, headers=err.headers())


_OPENAI_CODES = {"extra_forbidden": "unknown_parameter", "missing": "missing_required_parameter"}


def openai_validation_error(exc: RequestValidationError) -> ServiceError:
    """A 400 naming the first offending parameter, as the OpenAI API answers."""
    base = validation_to_error(exc)
    if isinstance(base, BadRequest):  # invalid JSON
        return OpenAIBadRequest(base.message, code="invalid_json")
    errors = exc.errors()
    if not errors:
        return OpenAIBadRequest("invalid request")
    e = errors[0]
    field = _field(tuple(e.get("loc", ())))
    param = None if field == "body" else field
    kind = str(e.get("type", ""))
    if kind == "extra_forbidden":
        msg = f"Unknown parameter: '{param}'."
    elif kind == "missing" and param is None:
        msg = "request body is required (JSON object)"
    elif kind in ("none_required", "literal_error", "enum"):
        msg = f"Unsupported value for '{param}': {e.get('input')!r}. {e.get('msg', '')}."
        return OpenAIBadRequest(msg, code="unsupported_value", param=param)
    else:
        msg = f"Invalid value for '{param}': {e.get('msg', 'invalid')}."
    return OpenAIBadRequest(msg, code=_OPENAI_CODES.get(kind, "invalid_value"), param=param)


def is_openai_path(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _field(loc: tuple[Any, ...]) -> str:
    """The field's dotted name, without its location (``("body", "query")`` -> ``query``)."""
    if loc and loc[0] in ("body", "query", "header", "path"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc) or "body"


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
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, openai=is_openai_path(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        state = getattr(request.app.state, "service", None)
        if state is not None:
            state.metrics.rejected.labels(reason="invalid").inc()
        if is_openai_path(request):
            return error_response(openai_validation_error(exc), openai=True)
        return error_response(validation_to_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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
        resp = error_response(err, openai=is_openai_path(request))
        for k, v in (exc.headers or {}).items():  # e.g. Allow on 405 (RFC 9110)
            resp.headers[k] = v
        return resp

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(ServiceError("internal error"), openai=is_openai_path(request))
