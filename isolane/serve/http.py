"""The HTTP plumbing of the REST routes: JSON in and out, query parameters, errors by kind.

Errors are JSON ``{"error": message, "type": name}`` with the status of the error's kind: 400
bad input, 404 unknown run, 409 wrong state for the operation, 413 a body over
:data:`MAX_BODY`, 503 the store cannot be reached (:func:`error_response`).
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
    StoreUnavailable,
    WorkflowNotFound,
)

__all__ = ["MAX_BODY", "MAX_JSON_DEPTH", "JSONResponse", "error_response", "guarded",
           "int_param", "json_body", "options_of", "query_int"]

#: The largest request body accepted, in bytes: refused (413) while it streams in, never
#: buffered whole.
MAX_BODY: Final = 1024 * 1024
#: A JSON body nested deeper than this is refused (400): no legitimate config needs it, and JSON
#: columns cannot store values nested past about 250 levels.
MAX_JSON_DEPTH: Final = 64
#: The largest value an integer query parameter may have (a seq is below 2**63).
_MAX_QUERY_INT: Final = 2**63 - 1


class _BodyTooLarge(ConfigError):
    """The request body passed :data:`MAX_BODY` (answered 413)."""


class JSONResponse(Response):
    """A JSON response encoded with orjson (non-string keys and odd values rendered)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=repr, option=orjson.OPT_NON_STR_KEYS)


def error_response(exc: Exception) -> JSONResponse:
    """The JSON error for an exception a handler let through."""
    status = 500
    if isinstance(exc, _BodyTooLarge):
        status = 413
    elif isinstance(exc, StoreUnavailable):
        status = 503
    elif isinstance(exc, RunNotFound):
        status = 404
    elif isinstance(exc, RunStateError):
        status = 409
    elif isinstance(exc, (ConfigError, WorkflowNotFound, IsolaneError)):
        status = 400
    return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=status)


async def json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ConfigError("send the body as JSON with 'Content-Type: application/json'")
    try:
        value = orjson.loads(await _bounded_body(request) or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("the body must be a JSON object")
    if _nests_deeper(value, MAX_JSON_DEPTH):
        raise ConfigError(f"the body nests deeper than {MAX_JSON_DEPTH} levels; flatten it")
    return value


async def _bounded_body(request: Request) -> bytes:
    """The body, read as it streams in and refused as soon as it passes :data:`MAX_BODY` (at
    once when its declared length does): the server never holds more than the limit."""
    too_large = _BodyTooLarge(f"the body has at most {MAX_BODY} bytes; send less")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large  # the rest stays unread; the server closes the connection
        chunks.append(chunk)
    return b"".join(chunks)


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value has containers nested more than ``limit`` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def query_int(raw: str | None, name: str, default: int, *, low: int = 0,
              high: int = _MAX_QUERY_INT) -> int:
    """An integer query parameter: ASCII digits only, within ``[low, high]``; raises
    :class:`ConfigError` stating the rule otherwise (``1e23``, ``-1``, ``0x10``, ``²``, a seq
    past 63 bits)."""
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(high)):
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value}")
    return value


def int_param(request: Request, name: str, default: int, *, low: int = 0,
              high: int = _MAX_QUERY_INT) -> int:
    """:func:`query_int` of the request's query parameter ``name``."""
    return query_int(request.query_params.get(name), name, default, low=low, high=high)


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
