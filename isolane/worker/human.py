"""Human input, the worker's side: a workflow or an AG2 agent asks, and waits for the answer.

::

    worker                                                     parent
    ──────                                                     ──────
    ctx.ask / ctx.approve / AG2 IOStream.input
      HumanChannel.ask ──emit human_input_request──▶ event pipe ─▶ store ─▶ pending_requests()
        waits on a threading.Event (no CPU)                                   ▲ API, WebSocket, CLI
    control thread ◀── {"op": "answer", request_id, text} ◀── control pipe ◀── answer(handle, ...)
      HumanChannel.deliver() sets the Event; ask() emits human_input_response and returns

The worker records the answer (``human_input_response``) so that its ``seq`` comes from the one
place that assigns them. A request is pending while the log has its ``human_input_request`` and
no ``human_input_response`` for the same ``request_id``.

Request ids are deterministic — ``<node or "run">:<n>`` for the n-th question asked in that node —
so a resumed worker that replays the workflow asks the *same* request again: a question that was
pending when the parent died is pending again (re-asked), and one that was answered is answered
from the log (:func:`resume_state`) without asking twice.

Timeouts: ``RunSpec(human_timeout=...)`` is the run's policy, ``timeout=`` overrides it per
question (``math.inf`` waits forever). When it passes, the question returns ``default`` if one was
given, else raises :class:`HumanInputTimeout`. If the parent goes away while a question waits,
nobody can answer it: the question raises :class:`HumanInputUnavailable`, the request stays pending
in the log, and resuming the run asks it again.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from isolane.errors import ConfigError, IsolaneError
from isolane.schemas.payloads import HIDDEN_ANSWER, HUMAN_REQUEST, HUMAN_RESPONSE
from isolane.worker.emitter import Emit

__all__ = [
    "HumanChannel",
    "HumanInputTimeout",
    "HumanInputUnavailable",
    "parse_approval",
]

log = logging.getLogger(__name__)

_YES: Final = frozenset({"y", "yes", "approve", "approved", "ok", "okay", "true", "1", "accept", "lgtm"})


class HumanInputTimeout(IsolaneError, TimeoutError):
    """Nobody answered a human-input request within its timeout."""

    def __init__(self, request_id: str, timeout: float) -> None:
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(
            f"no answer to human-input request {request_id!r} within {timeout:g} s; answer sooner, "
            "raise RunSpec(human_timeout=...) or the question's timeout=, or pass default= to "
            "continue without an answer")


class HumanInputUnavailable(IsolaneError):
    """The parent that could answer is gone (its control pipe closed); resuming re-asks."""

    def __init__(self, request_id: str | None) -> None:
        self.request_id = request_id
        what = f"request {request_id!r}" if request_id else "a human-input request"
        super().__init__(
            f"the parent process went away, so nobody can answer {what}; the request is kept in "
            "the run's log: resume the run (`isolane resume RUN`) and it is asked again")


# -- asking -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    request_id: str
    event: threading.Event
    answer: str | None = None
    source: str | None = None


class HumanChannel:
    """The worker's end: asks (any thread) and answers delivered by the control thread.

    ``emit(type, data, node_id)`` and ``flush()`` are the run's emitter; ``current_node`` names
    the node a question belongs to. Thread-safe.
    """

    def __init__(self, emit: Emit, *, current_node: Callable[[], str | None],
                 flush: Callable[[], None] = lambda: None, timeout: float | None = None,
                 answers: Mapping[str, str] | None = None) -> None:
        self._emit = emit
        self._current_node = current_node
        self._flush = flush
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiting] = {}
        self._counts: dict[str, int] = {}
        self._recorded: dict[str, str] = {}
        self._gone = False
        self.timeout: float | None = None
        #: The text of the last answer received (``approve`` keeps a reviewer's feedback here).
        self.last_answer: str | None = None
        self.configure(timeout=timeout, answers=answers)

    def configure(self, *, timeout: float | None = None, answers: Mapping[str, str] | None = None) -> None:
        """Set the run's timeout policy and the answers already in the log (a resumed run)."""
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"human_timeout must be positive seconds (or None to wait), got {timeout!r}")
        self.timeout = timeout
        self._recorded = dict(answers or {})

    # -- asking ------------------------------------------------------------------------------------

    def ask(self, prompt: str, *, timeout: float | None = None, default: str | None = None,
            kind: str = "text", agent: str | None = None) -> str:
        """Ask a person and wait (no CPU) for the answer; return its text.

        ``timeout`` defaults to the run's policy (``math.inf``: wait forever). When it passes,
        return ``default`` if given, else raise :class:`HumanInputTimeout`. Raises
        :class:`HumanInputUnavailable` when the parent is gone.
        """
        if not isinstance(prompt, str):
            raise ConfigError(f"a human-input prompt must be text, got {type(prompt).__name__}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be positive seconds, got {timeout!r}")
        node = self._current_node()
        with self._lock:
            scope = node or "run"
            n = self._counts[scope] = self._counts.get(scope, 0) + 1
            request_id = f"{scope}:{n}"
            if request_id in self._recorded:
                recorded = self._recorded.pop(request_id)
                self.last_answer = recorded
                log.info("human-input request %s answered from the log (resumed run)", request_id)
                return recorded
            if self._gone:
                raise HumanInputUnavailable(request_id)
            waiting = self._waiting[request_id] = _Waiting(request_id, threading.Event())
        limit = timeout if timeout is not None else self.timeout
        if limit is not None and math.isinf(limit):
            limit = None
        data: dict[str, Any] = {"request_id": request_id, "prompt": prompt, "agent": agent, "kind": kind}
        if limit is not None:
            data["timeout_s"] = limit
        if default is not None:
            data["default"] = default if kind != "password" else HIDDEN_ANSWER
        self._emit(HUMAN_REQUEST, data, node)
        self._flush()  # a person is waiting on this one: do not linger for a batch
        answered = waiting.event.wait(limit)
        with self._lock:
            self._waiting.pop(request_id, None)
            text, source = waiting.answer, waiting.source
        if text is None:
            if answered:  # woken without an answer: the parent went away
                raise HumanInputUnavailable(request_id)
            assert limit is not None
            self._record(request_id, node, default, kind=kind, source="timeout", timed_out=True)
            if default is None:
                raise HumanInputTimeout(request_id, limit)
            self.last_answer = default
            return default
        self._record(request_id, node, text, kind=kind, source=source, timed_out=False)
        self.last_answer = text
        return text

    def approve(self, prompt: str, *, timeout: float | None = None, default: bool | None = None) -> bool:
        """Ask for an approval; ``True`` for an affirmative answer (see :func:`parse_approval`).

        Anything else is a rejection; its text (a reviewer's feedback) is kept in
        :attr:`last_answer`.
        """
        fallback = None if default is None else ("approve" if default else "reject")
        return parse_approval(self.ask(prompt, timeout=timeout, default=fallback, kind="approval"))

    def ask_ag2(self, prompt: str = "", *, password: bool = False) -> str:
        """AG2's ``IOStream.input``: the asking agent is named when it can be found."""
        return self.ask(prompt, kind="password" if password else "text", agent=_asking_agent())

    def _record(self, request_id: str, node: str | None, text: str | None, *, kind: str,
                source: str | None, timed_out: bool) -> None:
        data: dict[str, Any] = {"request_id": request_id, "timed_out": timed_out}
        if text is not None:
            data["text"] = HIDDEN_ANSWER if kind == "password" else text
        if source is not None:
            data["source"] = source
        self._emit(HUMAN_RESPONSE, data, node)

    # -- the control thread ------------------------------------------------------------------------

    def deliver(self, request_id: str, text: str, *, source: str | None = None) -> bool:
        """An answer arrived; wake the question waiting for it. ``False`` if none waits."""
        with self._lock:
            waiting = self._waiting.get(request_id)
            if waiting is None or waiting.event.is_set():
                log.info("answer to human-input request %r ignored: nothing waits for it", request_id)
                return False
            waiting.answer = str(text)
            waiting.source = source
            waiting.event.set()
        return True

    def deliver_message(self, message: Mapping[str, Any]) -> bool:
        """Deliver a control message ``{"op": "answer", "request_id", "text", "source"}``."""
        request_id, text = message.get("request_id"), message.get("text")
        if not isinstance(request_id, str) or not isinstance(text, str):
            log.warning("malformed answer message ignored: %r", message)
            return False
        source = message.get("source")
        return self.deliver(request_id, text, source=source if isinstance(source, str) else None)

    def disconnect(self) -> None:
        """The control pipe closed: wake every waiting question (it raises), refuse new ones."""
        with self._lock:
            self._gone = True
            for waiting in self._waiting.values():
                waiting.event.set()

    @property
    def waiting(self) -> list[str]:
        """Ids of the questions waiting for an answer now."""
        with self._lock:
            return list(self._waiting)


def _asking_agent() -> str | None:
    """The name of the AG2 agent whose ``get_human_input`` is on the stack, if any."""
    frame = sys._getframe(1)
    for _ in range(12):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return None
        if frame.f_code.co_name in ("get_human_input", "a_get_human_input"):
            name = getattr(frame.f_locals.get("self"), "name", None)
            return name if isinstance(name, str) else None
    return None


def parse_approval(text: str) -> bool:
    """``True`` for an affirmative answer (``yes``, ``y``, ``approve``, ``ok``, ``lgtm`` …)."""
    return text.strip().lower().rstrip(".!") in _YES
