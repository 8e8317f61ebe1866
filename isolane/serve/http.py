"""The HTTP plumbing of the REST routes: JSON in and out, query parameters, errors by kind.

Errors are JSON ``{"error": message, "type": name}`` with the status of the error's kind: 400
bad input, 404 unknown run, 409 wrong state for the operation (:func:`error_response`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from isolane.errors import (
    ConfigError,
    IsolaneError,
    RunNotFound,
    RunStateError,
    WorkflowNotFound,
)

__all__ = ["MAX_BODY", "JSONResponse", "error_response", "guarded", "int_param", "json_body",
           "options_of"]

#: The largest request body accepted, in bytes.
MAX_BODY: Final = 1024 * 1024


class JSONResponse(Response):
    """A JSON response encoded with orjson (non-string keys and odd values rendered)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=repr, option=orjson.OPT_NON_STR_KEYS)


def error_response(exc: Exception) -> JSONResponse:
    """The JSON error for an exception a handler let through."""
    status = 500
    if isinstance(exc, RunNotFound):
        status = 404
    elif isinstance(exc, RunStateError):
        status = 409
    elif isinstance(exc, (ConfigError, WorkflowNotFound, IsolaneError)):
        status = 400
    return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=status)


async def json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ConfigError("send the body as JSON with 'Content-Type: application/json'")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ConfigError(f"the body has at most {MAX_BODY} bytes")
    try:
        value = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("the body must be a JSON object")
    return value


def int_param(request: Request, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return value


def options_of(body: Mapping[str, Any], fields: Mapping[str, type | tuple[type, ...]], *,
             required: str) -> dict[str, Any]:
    """The optional ``fields`` of a request body, type-checked; ``None`` values left out."""
    options: dict[str, Any] = {}
    for key, value in body.items():
        expected = fields.get(key)
        if expected is None:
            raise ConfigError(f"unknown field {key!r}; send {required} and any of "
                              f"{', '.join(sorted(fields))}")
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise ConfigError(f"field {key!r} has the wrong type ({type(value).__name__})")
        if value is not None:
            options[key] = value
    return options


def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except IsolaneError as exc:
            return error_response(exc)

    run.__name__ = handler.__name__
    return run
