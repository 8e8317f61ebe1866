"""The guard in front of every route and socket: host, token, origin.

::

    request / WebSocket upgrade ──▶ Guard
        1. Host header on the allow-list     (default: loopback names — stops DNS rebinding)
        2. token, when one is configured     (``Authorization: Bearer``, the ``isolane_token``
                                              cookie, or ``?token=``; compared in constant time)
        3. Origin, when the browser sent one (WebSocket upgrades and every non-GET request:
                                              same host as the request, or on the allow-list)
        ──▶ the app;  refused: HTTP 400/401/403 with a JSON error, or the upgrade closed (1008)

A page opened with ``?token=`` gets the token as an ``HttpOnly``, ``SameSite=Strict`` cookie, so
the page's own scripts, fetches and sockets authenticate without the token in every URL.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Collection
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Final
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isolane import settings

__all__ = ["COOKIE_NAME", "LOOPBACK_HOSTS", "TOKEN_ENV", "Guard", "GuardPolicy"]

log = logging.getLogger(__name__)

#: The environment variable that holds the service's token.
TOKEN_ENV: Final = settings.TOKEN_ENV
COOKIE_NAME: Final = "isolane_token"
#: Host names a service bound to the loopback interface answers to.
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_WS_POLICY_VIOLATION: Final = 1008


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardPolicy:
    """Who may talk to the service.

    ``token``: required on every request when set. ``allowed_hosts``: names the ``Host`` header
    may carry (``"*"`` for any). ``allowed_origins``: origins (``"http://host:port"``) allowed
    besides the service's own host (``"*"`` for any).
    """

    token: str | None = None
    allowed_hosts: Collection[str] = LOOPBACK_HOSTS
    allowed_origins: Collection[str] = ()


class Guard:
    """Pure ASGI middleware enforcing a :class:`GuardPolicy` on HTTP and WebSocket scopes."""

    def __init__(self, app: ASGIApp, *, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy
        self._token = policy.token.encode() if policy.token else None
        self._any_host = "*" in policy.allowed_hosts
        self._hosts = frozenset(h.lower() for h in policy.allowed_hosts)
        self._any_origin = "*" in policy.allowed_origins
        self._origins = frozenset(o.rstrip("/").lower() for o in policy.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        problem = self._check_host(host)
        status = 400
        token_from_query = False
        if problem is None and self._token is not None:
            problem, token_from_query = self._check_token(scope, headers)
            status = 401
        if problem is None and (kind == "websocket" or scope.get("method") not in _SAFE_METHODS):
            problem = self._check_origin(headers.get("origin"), host)
            status = 403
        if problem is not None:
            log.info("refused %s %s: %s", kind, scope.get("path"), problem)
            await _refuse(kind, status, problem, send)
            return
        if token_from_query and kind == "http":
            send = _with_cookie(send, self.policy.token or "")
        await self.app(scope, receive, send)

    def _check_host(self, host: str) -> str | None:
        if self._any_host:
            return None
        name = urlsplit(f"//{host}").hostname or ""
        if name.lower() in self._hosts or f"[{name.lower()}]" in self._hosts:
            return None
        return (f"host {host!r} is not served here; use one of {', '.join(sorted(self._hosts))} "
                "(or start the service with --allow-host)")

    def _check_token(self, scope: Scope, headers: dict[str, str]) -> tuple[str | None, bool]:
        assert self._token is not None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and _same(auth[7:].strip(), self._token):
            return None, False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except CookieError:  # a malformed cookie header is just no cookie
            cookie = SimpleCookie()
        if COOKIE_NAME in cookie and _same(cookie[COOKIE_NAME].value, self._token):
            return None, False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if any(_same(value, self._token) for value in query.get("token", ())):
            return None, True
        return ("a valid token is required: send 'Authorization: Bearer <token>' (or ?token=<token> "
                f"for a WebSocket or the page); the service's token is ${TOKEN_ENV}"), False

    def _check_origin(self, origin: str | None, host: str) -> str | None:
        if origin is None or self._any_origin:
            return None  # not a browser, or any origin allowed
        parts = urlsplit(origin)
        if parts.netloc.lower() == host.lower() or origin.rstrip("/").lower() in self._origins:
            return None
        return (f"origin {origin!r} may not use this service; allow it with "
                "create_app(allowed_origins=[...]) or `isolane serve --allow-origin`")


def _same(given: str, expected: bytes) -> bool:
    return hmac.compare_digest(given.encode(), expected)


async def _refuse(kind: str, status: int, message: str, send: Send) -> None:
    if kind == "websocket":
        # Closing before accepting makes the server answer the upgrade with HTTP 403.
        await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION, "reason": message[:120]})
        return
    body = orjson.dumps({"error": message, "type": "Forbidden" if status == 403 else "Unauthorized"
                         if status == 401 else "BadRequest"})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _with_cookie(send: Send, token: str) -> Send:
    cookie = f"{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return sending
