"""Human input, the parent's side: the questions a run's log holds, and answering them.

::

    store ── human_input_request / human_input_response events ──▶ pending_requests(events)
    Executor.answer(run, request_id, text) ── answer(): the run is live here, the request is
        pending, not answered yet ──▶ LiveRun.send_answer ── {"op": "answer", ...} ──▶ worker

The worker records the answer itself (``human_input_response``, see
:mod:`isolane.worker.human`), so a request is pending while the log has its request and no
response for the same ``request_id``; :func:`recorded_answers` is what a resumed worker is told
(answered questions are not asked twice).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from isolane.errors import ConfigError, RunStateError
from isolane.schemas.envelope import Event
from isolane.schemas.payloads import (
    HIDDEN_ANSWER,
    HUMAN_EVENT_TYPES,
    HUMAN_REQUEST,
    HUMAN_RESPONSE,
)

if TYPE_CHECKING:
    from isolane.executor.live import LiveRun
    from isolane.tracking.store import Store

__all__ = [
    "EVENT_TYPES",
    "MAX_ANSWER_CHARS",
    "HumanRequest",
    "answer",
    "check_answer",
    "pending",
    "pending_requests",
    "recorded_answers",
]

#: The event types that carry questions and answers.
EVENT_TYPES: Final = HUMAN_EVENT_TYPES
#: An answer longer than this is refused (it travels through the control pipe and the log).
MAX_ANSWER_CHARS: Final = 256 * 1024

log = logging.getLogger(__name__)


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
        if event.type == HUMAN_REQUEST:
            open_.pop(request_id, None)  # re-asked after a resume: keep the newest, at the end
            timeout = event.data.get("timeout_s")
            open_[request_id] = HumanRequest(
                run_id=event.run_id, request_id=request_id, prompt=str(event.data.get("prompt", "")),
                kind=str(event.data.get("kind") or "text"), agent=event.data.get("agent"),
                node_id=event.node_id, seq=event.seq, ts=event.ts,
                timeout_s=float(timeout) if isinstance(timeout, int | float) else None)
        elif event.type == HUMAN_RESPONSE:
            open_.pop(request_id, None)
    return list(open_.values())


def recorded_answers(events: Iterable[Event]) -> dict[str, str]:
    """Answers a person gave (not timeouts, not redacted passwords), by request id."""
    answers: dict[str, str] = {}
    for event in events:
        if event.type != HUMAN_RESPONSE or event.data.get("timed_out"):
            continue
        request_id, text = event.data.get("request_id"), event.data.get("text")
        if isinstance(request_id, str) and isinstance(text, str) and text != HIDDEN_ANSWER:
            answers[request_id] = text
    return answers


def check_answer(text: object) -> str:
    """``text`` if it can be sent as an answer; else :class:`ConfigError` stating the rule."""
    if not isinstance(text, str):
        raise ConfigError(f"an answer must be text, got {type(text).__name__}")
    if len(text) > MAX_ANSWER_CHARS:
        raise ConfigError(f"an answer has at most {MAX_ANSWER_CHARS} characters, got {len(text)}")
    return text


async def pending(store: Store, run_id: str) -> list[HumanRequest]:
    """The run's pending human-input requests, read from the store."""
    events = await anyio.to_thread.run_sync(lambda: store.events(run_id, types=EVENT_TYPES))
    return pending_requests(events)


async def answer(store: Store, live: LiveRun | None, run_id: str, request_id: str, text: str, *,
                 source: str = "api") -> None:
    """Send ``text`` as the answer to the pending request ``request_id`` of ``live``, the run
    ``run_id`` as this parent drives it (``None``: it does not).

    Raises :class:`RunStateError` when the run is not running here, the request is not pending,
    or it was already answered; :class:`ConfigError` for an answer that is not text or is too
    long.
    """
    check_answer(text)
    if live is None or live.done or live.monitor is None:
        raise RunStateError(
            f"run {run_id} is not running in this executor, so nothing can receive an "
            "answer; if it was interrupted while asking, resume it and the question is asked again")
    waiting = await pending(store, run_id)
    if request_id not in {r.request_id for r in waiting}:
        ids = ", ".join(r.request_id for r in waiting) or "none"
        raise RunStateError(
            f"run {run_id} has no pending human-input request {request_id!r} "
            f"(pending: {ids}); it may have been answered or timed out")
    live.send_answer(request_id, text, source=source)
    log.info("run %s: answered human-input request %s (%s)", run_id, request_id, source)
