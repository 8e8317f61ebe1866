"""Human input across the process boundary: a workflow or an AG2 agent asks, a person answers.

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
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from isolane.errors import ConfigError, IsolaneError, RunStateError
from isolane.schemas.envelope import Event

if TYPE_CHECKING:
    from isolane.executor.executor import RunHandle

__all__ = [
    "EVENT_TYPES",
    "HUMAN_RESUME_KEY",
    "MAX_ANSWER_CHARS",
    "HumanChannel",
    "HumanInputTimeout",
    "HumanInputUnavailable",
    "HumanRequest",
    "answer",
    "parse_approval",
    "pending",
    "pending_requests",
    "recorded_answers",
    "resume_state",
]

log = logging.getLogger(__name__)

#: The key of :func:`resume_state` in ``WorkerSpec.resume``.
HUMAN_RESUME_KEY: Final = "human_answers"
#: An answer longer than this is refused (it travels through the control pipe and the log).
MAX_ANSWER_CHARS: Final = 256 * 1024
_REQUEST: Final = "human_input_request"
_RESPONSE: Final = "human_input_response"
#: The event types that carry questions and answers.
EVENT_TYPES: Final = (_REQUEST, _RESPONSE)
_YES: Final = frozenset({"y", "yes", "approve", "approved", "ok", "okay", "true", "1", "accept", "lgtm"})
_REDACTED: Final = "***"


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


# -- worker side -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    request_id: str
    event: threading.Event
    answer: str | None = None
    source: str | None = None


EmitFn = Callable[[str, dict[str, Any], str | None], int]


class HumanChannel:
    """The worker's end: asks (any thread) and answers delivered by the control thread.

    ``emit(type, data, node_id)`` and ``flush()`` are the run's emitter; ``current_node`` names
    the node a question belongs to. Thread-safe.
    """

    def __init__(self, emit: EmitFn, *, current_node: Callable[[], str | None],
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
            data["default"] = default if kind != "password" else _REDACTED
        self._emit(_REQUEST, data, node)
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
            data["text"] = _REDACTED if kind == "password" else text
        if source is not None:
            data["source"] = source
        self._emit(_RESPONSE, data, node)

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


# -- parent side -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HumanRequest:
    """A question waiting for a person, as stored in the run's log."""

    run_id: str
    request_id: str
    prompt: str
    kind: str
    agent: str | None
    node_id: str | None
    seq: int
    ts: float
    timeout_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "request_id": self.request_id, "prompt": self.prompt,
                "kind": self.kind, "agent": self.agent, "node_id": self.node_id, "seq": self.seq,
                "ts": self.ts, "timeout_s": self.timeout_s}


def pending_requests(events: Iterable[Event]) -> list[HumanRequest]:
    """Requests without a response, oldest first; a re-asked request appears once (its latest)."""
    open_: dict[str, HumanRequest] = {}
    for event in events:
        request_id = event.data.get("request_id")
        if not isinstance(request_id, str):
            continue
        if event.type == _REQUEST:
            open_.pop(request_id, None)  # re-asked after a resume: keep the newest, at the end
            timeout = event.data.get("timeout_s")
            open_[request_id] = HumanRequest(
                run_id=event.run_id, request_id=request_id, prompt=str(event.data.get("prompt", "")),
                kind=str(event.data.get("kind") or "text"), agent=event.data.get("agent"),
                node_id=event.node_id, seq=event.seq, ts=event.ts,
                timeout_s=float(timeout) if isinstance(timeout, int | float) else None)
        elif event.type == _RESPONSE:
            open_.pop(request_id, None)
    return list(open_.values())


def recorded_answers(events: Iterable[Event]) -> dict[str, str]:
    """Answers a person gave (not timeouts, not redacted passwords), by request id."""
    answers: dict[str, str] = {}
    for event in events:
        if event.type != _RESPONSE or event.data.get("timed_out"):
            continue
        request_id, text = event.data.get("request_id"), event.data.get("text")
        if isinstance(request_id, str) and isinstance(text, str) and text != _REDACTED:
            answers[request_id] = text
    return answers


def resume_state(events: Iterable[Event]) -> dict[str, Any]:
    """What a resumed worker needs from the log: merge into ``WorkerSpec.resume``.

    Answered questions are answered again from the log; pending ones are asked again (same
    request id) by the replaying workflow.
    """
    return {HUMAN_RESUME_KEY: recorded_answers(events)}


async def pending(handle: RunHandle) -> list[HumanRequest]:
    """The run's pending human-input requests, read from the store."""
    store = handle._executor.store
    events = await anyio.to_thread.run_sync(
        lambda: store.events(handle.run_id, types=EVENT_TYPES))
    return pending_requests(events)


# Answers sent but not yet recorded by the worker, per live run: a second answer is refused.
_sent: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


async def answer(handle: RunHandle, request_id: str, text: str, *, source: str = "api") -> None:
    """Send ``text`` as the answer to the pending request ``request_id`` of a live run.

    Raises :class:`RunStateError` when the run is not running in this executor, the request is
    not pending, or it was already answered; :class:`ConfigError` for an answer that is not
    text or is too long.
    """
    if not isinstance(text, str):
        raise ConfigError(f"an answer must be text, got {type(text).__name__}")
    if len(text) > MAX_ANSWER_CHARS:
        raise ConfigError(f"an answer has at most {MAX_ANSWER_CHARS} characters, got {len(text)}")
    monitor = handle._monitor
    if handle.done or monitor is None:
        raise RunStateError(
            f"run {handle.run_id} is not running in this executor, so nothing can receive an "
            "answer; if it was interrupted while asking, resume it and the question is asked again")
    waiting = await pending(handle)
    if request_id not in {r.request_id for r in waiting}:
        ids = ", ".join(r.request_id for r in waiting) or "none"
        raise RunStateError(
            f"run {handle.run_id} has no pending human-input request {request_id!r} "
            f"(pending: {ids}); it may have been answered or timed out")
    sent = _sent.setdefault(handle, set())
    if request_id in sent:
        raise RunStateError(f"request {request_id!r} of run {handle.run_id} was already answered")
    try:
        monitor.worker.send_control({"op": "answer", "request_id": request_id, "text": text,
                                     "source": source})
    except (OSError, ValueError) as exc:
        raise RunStateError(
            f"could not reach the worker of run {handle.run_id} ({exc}); it is probably ending") from exc
    sent.add(request_id)
    log.info("run %s: answered human-input request %s (%s)", handle.run_id, request_id, source)
