"""The HTTP side of :class:`~isolane.testing.FakeLLM`: routing, JSON and SSE writing.

Each connection is served by a handler thread of a ``ThreadingHTTPServer``; the handler asks its
``FakeLLM`` for the reply (script, injected failures, latency, counting) and only writes bytes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from isolane.errors import ConfigError

if TYPE_CHECKING:
    from isolane.offline.server import FakeLLM

__all__ = ["FakeLLMServer"]

logger = logging.getLogger(__name__)

_WORDS = re.compile(r"\s*\S+\s*|\s+")


class FakeLLMServer(ThreadingHTTPServer):
    """A threading HTTP server whose handlers answer for ``fake`` (set right after creation)."""

    daemon_threads = True
    block_on_close = False
    fake: FakeLLM

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a worker killed mid-call) is routine here: log it, no traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            logger.debug("client %s went away before its answer: %s", client_address, exc)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeLLMServer
    timeout = 60  # an idle keep-alive connection does not pin a thread forever

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        logger.debug("%s %s", self.address_string(), format % args)

    # -- routing ----------------------------------------------------------------------------------

    def do_GET(self) -> None:  # stdlib naming
        if self.path.rstrip("/") == "/v1/models":
            models = self.server.fake.models
            self._send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "isolane-testing"} for m in models]})
        else:
            self._send_error(404, f"no route GET {self.path}; this server serves /v1/models and "
                                  "POST /v1/chat/completions", "not_found")

    def do_POST(self) -> None:  # stdlib naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_error(404, f"no route POST {self.path}; this server serves "
                                  "POST /v1/chat/completions", "not_found")
            return
        fake = self.server.fake
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ConfigError("the request body must be a JSON object")
            request = fake._runner.make_request(body)
        except (ValueError, ConfigError) as exc:  # json.JSONDecodeError is a ValueError
            fake._count_error(400)
            self._send_error(400, f"invalid chat completion request: {exc}", "invalid_request_error")
            return
        reply = fake._next_reply(request)
        fake._wait(reply.latency_s + fake.latency_s)
        if reply.is_error:
            fake._count_error(reply.status)
            headers = {} if reply.retry_after_s is None else {"retry-after-ms": str(round(reply.retry_after_s * 1000))}
            self._send_error(reply.status, reply.error, "scripted_error", headers=headers)
            return
        completion = fake._completion(request, reply)
        if body.get("stream"):
            self._send_sse(completion, include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
        else:
            self._send_json(200, completion)

    # -- writing ----------------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, kind: str, *, headers: Mapping[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": None,
                                           "code": HTTPStatus(status).phrase.lower().replace(" ", "_")}},
                        headers)

    def _send_sse(self, completion: Mapping[str, Any], *, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # no length: the end of the body is the close
        self.end_headers()
        self.close_connection = True
        for chunk in _chunks(completion, include_usage=include_usage):
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _chunks(completion: Mapping[str, Any], *, include_usage: bool) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects that stream ``completion`` (OpenAI's SSE shape)."""
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"]}
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    for piece in _WORDS.findall(message.get("content") or ""):
        yield chunk({"content": piece})
    for index, call in enumerate(message.get("tool_calls") or ()):
        yield chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                     "function": call["function"]}]})
    yield chunk({}, choice["finish_reason"])
    if include_usage:
        yield {**base, "choices": [], "usage": completion["usage"]}
