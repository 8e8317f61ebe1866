"""A real OpenAI-compatible HTTP server on 127.0.0.1 that answers from a script.

::

    test / benchmark                          FakeLLM (background thread)
    ────────────────                          ───────────────────────────
    openai.OpenAI(base_url=llm.base_url) ─┐   ThreadingHTTPServer on 127.0.0.1:<free port>
    AG2 agents (LLMConfig(llm.config())) ─┼──▶  POST /v1/chat/completions → ScriptRunner.answer()
                                          │    GET  /v1/models
                                          └─◀  JSON (or SSE when "stream": true), with usage
    llm.served  ◀── totals of what was answered (calls, tokens, per model, errors)

It is the only fake in isolane's tests: everything above it (SDK, AG2, isolane) is real. Every
successful answer carries ``usage`` computed by the fake tokenizer
(:func:`~isolane.testing.count_tokens`: whitespace words) and ``model`` echoing the request, and is
added to :attr:`FakeLLM.served`, so a test can prove isolane's stored totals equal what the endpoint
billed.

Run standalone with ``python -m isolane.testing.llm_server`` (see that module).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from isolane.errors import ConfigError
from isolane.offline._http import FakeLLMServer
from isolane.offline.script import (
    ChatRequest,
    Reply,
    Rule,
    Script,
    ScriptRunner,
    count_tokens,
    fail,
    message_text,
)

__all__ = ["DEFAULT_MODEL", "FakeLLM", "ModelUsage", "Served"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL: Final = "fake-model"


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """What the server answered for one model."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """``prompt_tokens + completion_tokens``."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Served:
    """A snapshot of everything the server answered.

    ``calls`` and the token totals count successful answers only; ``errors`` counts the HTTP
    errors served (scripted, injected with :meth:`FakeLLM.fail_next`, or malformed requests),
    ``errors_by_status`` the same per HTTP status. ``speaker_selection_calls`` is the part of
    ``calls`` that were AG2 speaker selections.
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    speaker_selection_calls: int = 0
    per_model: Mapping[str, ModelUsage] = field(default_factory=dict)
    errors_by_status: Mapping[int, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        """``prompt_tokens + completion_tokens``."""
        return self.prompt_tokens + self.completion_tokens


class FakeLLM:
    """A scripted OpenAI-compatible endpoint on ``127.0.0.1``; use it as a context manager.

    ::

        with FakeLLM(script=Script(Rule(system="planner", reply=text("hi")), default="TERMINATE")) as llm:
            client = openai.OpenAI(base_url=llm.base_url, api_key="test")

    ``script`` may be a :class:`Script`, a sequence of :class:`Rule`, a plain string (always that
    text) or ``None`` (always ``"TERMINATE"``). ``latency_s`` delays every answer (benchmarks);
    ``models`` are listed by ``GET /v1/models`` besides every model requested so far.
    :attr:`requests` keeps the last ``max_recorded_requests`` requests (bounded for benchmarks).
    Thread-safe: answers may be served concurrently; ``served`` is a consistent snapshot.
    """

    def __init__(
        self,
        script: Script | Sequence[Rule] | str | None = None,
        *,
        port: int = 0,
        latency_s: float = 0.0,
        models: Sequence[str] = (DEFAULT_MODEL,),
        max_recorded_requests: int = 10_000,
    ) -> None:
        if max_recorded_requests < 0:
            raise ConfigError("max_recorded_requests cannot be negative")
        if latency_s < 0:
            raise ConfigError("latency_s cannot be negative")
        if not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0 (any free port) or 1-65535, got {port}")
        if script is None:
            script = Script(default="TERMINATE")
        elif isinstance(script, str):
            script = Script(default=script)
        elif not isinstance(script, Script):
            script = Script(*script)
        self.script = script
        self.latency_s = latency_s
        self._port = port
        self._runner = ScriptRunner(script)
        self._lock = threading.Lock()
        self._models: list[str] = list(models)
        self._usage: dict[str, ModelUsage] = {}
        self._errors: dict[int, int] = {}
        self._selections = 0
        self._requests: deque[ChatRequest] = deque(maxlen=max_recorded_requests)
        self._ids = 0
        self._call_ids = 0
        self._failures: list[Reply] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: FakeLLMServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind ``127.0.0.1`` and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            raise ConfigError("this FakeLLM is already started")
        server = FakeLLMServer(("127.0.0.1", self._port))
        server.fake = self
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FakeLLM:{server.server_address[1]}", daemon=True)
        self._thread.start()
        logger.info("fake LLM serving at %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
        server.server_close()
        if self._thread is not None:
            self._thread.join()
        logger.info("fake LLM stopped")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (raises if not started)."""
        if self._server is None:
            raise ConfigError("the FakeLLM is not started; use it as a context manager or call start()")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: the OpenAI ``base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def config(self, model: str = DEFAULT_MODEL, **extra: Any) -> dict[str, Any]:
        """One AG2 config entry for this endpoint: ``LLMConfig(llm.config())``."""
        return {"api_type": "openai", "model": model, "base_url": self.base_url, "api_key": "test", **extra}

    @property
    def models(self) -> list[str]:
        """The models ``GET /v1/models`` lists."""
        with self._lock:
            return list(self._models)

    # -- what tests inspect -----------------------------------------------------------------------

    @property
    def served(self) -> Served:
        """Totals of the answers served so far."""
        with self._lock:
            per_model = dict(self._usage)
            return Served(
                calls=sum(u.calls for u in per_model.values()),
                prompt_tokens=sum(u.prompt_tokens for u in per_model.values()),
                completion_tokens=sum(u.completion_tokens for u in per_model.values()),
                errors=sum(self._errors.values()),
                speaker_selection_calls=self._selections,
                per_model=per_model,
                errors_by_status=dict(self._errors),
            )

    @property
    def requests(self) -> list[ChatRequest]:
        """The well-formed chat requests received (the most recent ones), in arrival order."""
        with self._lock:
            return list(self._requests)

    def fail_next(self, status: int = 500, *, times: int = 1, error: str = "injected failure",
                  retry_after_s: float | None = None) -> None:
        """Answer the next ``times`` chat requests with HTTP ``status`` before consulting the script
        (with a ``retry-after-ms`` header when ``retry_after_s`` is given)."""
        if times < 1:
            raise ConfigError("times must be at least 1")
        reply = fail(status, error, retry_after_s=retry_after_s)
        with self._lock:
            self._failures.extend([reply] * times)

    # -- serving (called from handler threads) ----------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)  # latency that a stop() interrupts

    def _count_error(self, status: int) -> None:
        with self._lock:
            self._errors[status] = self._errors.get(status, 0) + 1

    def _next_reply(self, request: ChatRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            if request.model not in self._models:
                self._models.append(request.model)
            if self._failures:
                return self._failures.pop(0)
        return self._runner.answer(request)

    def _completion(self, request: ChatRequest, reply: Reply) -> dict[str, Any]:
        """Build the ``chat.completion`` for a successful reply and count it as served."""
        with self._lock:
            self._ids += 1
            completion_id = f"chatcmpl-fake-{self._ids}"
            calls = []
            for spec in reply.tool_calls:
                if spec.id is None:
                    self._call_ids += 1
                call_id = spec.id or f"call_{self._call_ids}"
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": spec.name, "arguments": spec.arguments_json()}})
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        prompt_tokens = request.prompt_tokens
        completion_tokens = count_tokens(message_text(message))
        with self._lock:
            old = self._usage.get(request.model, ModelUsage())
            self._usage[request.model] = ModelUsage(
                old.calls + 1, old.prompt_tokens + prompt_tokens, old.completion_tokens + completion_tokens)
            self._selections += request.is_speaker_selection
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": "isolane-fake",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
