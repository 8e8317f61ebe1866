"""Human input, the parent's side: the questions a run's log holds, and answering them.

::

    store ── human_input_request / human_input_response events ──▶ pending_requests(events)
    Executor.answer(run, request_id, text) ── answer(): the run is live here, the request is
        pending, not answered yet ──▶ LiveRun.send_answer ── {"op": "answer", ...} ──▶ worker

The worker records the answer itself (``human_input_response``, see
:mod:`isolane.worker.human`), so a request is pending while the log has its request and no
response for the same ``request_id``; :func:`recorded_answers` is what a resumed worker is told
(answered questions are not asked twice).

Answering a run another process drives (``isolane answer``, a second service on the same
database) goes through the store: :func:`post_answer` posts it (:mod:`isolane.tracking.answers`),
the owner's :func:`deliver_posted` loop sends it down the control pipe as above and settles it,
and the poster reads the settlement::

    post_answer ── posted_answers row ──▶ owner: deliver_posted (every POLL_INTERVAL) ──▶ answer()
         ▲                                        │
         └──────────── settlement(id) ◀── settle(id, refused=None | why) ◀──┘
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from isolane.errors import ConfigError, IsolaneError, RunStateError
from isolane.executor.ownership import owner_alive
from isolane.executor.run import TERMINAL_STATUSES
from isolane.schemas.envelope import Event
from isolane.schemas.payloads import (
    HIDDEN_ANSWER,
    HUMAN_EVENT_TYPES,
    HUMAN_REQUEST,
    HUMAN_RESPONSE,
)
from isolane.tracking import answers as posted

if TYPE_CHECKING:
    from isolane.executor.live import LiveRun, LiveRuns
    from isolane.tracking.store import Store

__all__ = [
    "EVENT_TYPES",
    "MAX_ANSWER_CHARS",
    "POLL_INTERVAL",
    "HumanRequest",
    "answer",
    "check_answer",
    "deliver_posted",
    "pending",
    "pending_requests",
    "post_answer",
    "recorded_answers",
]

#: The event types that carry questions and answers.
EVENT_TYPES: Final = HUMAN_EVENT_TYPES
#: An answer longer than this is refused (it travels through the control pipe and the log).
MAX_ANSWER_CHARS: Final = 256 * 1024
#: Seconds between two looks of a run's owner for answers posted from elsewhere.
POLL_INTERVAL: Final = 0.5

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

    A run this parent does not drive is answered through its owner (:func:`post_answer`).
    Raises :class:`RunStateError` when the run is not running, the request is not pending,
    or it was already answered; :class:`ConfigError` for an answer that is not text or is too
    long.
    """
    check_answer(text)
    if live is None:
        await anyio.to_thread.run_sync(lambda: post_answer(store, run_id, request_id, text, source=source))
        return
    if live.done or live.monitor is None:
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


# -- answering a run another process drives ---------------------------------------------------------


def post_answer(store: Store, run_id: str, request_id: str, text: str, *, source: str = "cli",
                wait: float = 15.0) -> None:
    """Answer ``request_id`` of ``run_id``, driven by another live process, through the store,
    and wait up to ``wait`` seconds for that process to deliver it (blocking).

    Raises :class:`RunStateError` when no live process drives the run, the request is not
    pending, the owner refused the answer (the reason is its own), or did not take it in time.
    """
    check_answer(text)
    row = store.get_run(run_id)
    if row.status in TERMINAL_STATUSES:
        raise RunStateError(f"run {row.id} has ended ({row.status}): it is not running in this "
                            "executor or any other, and no question of it waits for an answer")
    if not owner_alive(row):
        raise RunStateError(
            f"run {row.id} is {row.status} but is not running in this executor or any other live "
            "process, so nothing can receive an answer; if it was interrupted while asking, resume "
            "it (`isolane resume RUN`) and the question is asked again")
    waiting = pending_requests(store.events(row.id, types=EVENT_TYPES))
    if request_id not in {r.request_id for r in waiting}:
        ids = ", ".join(r.request_id for r in waiting) or "none"
        raise RunStateError(f"run {row.id} has no pending human-input request {request_id!r} "
                            f"(pending: {ids}); it may have been answered or timed out")
    answer_id = posted.post(store, row.id, request_id, text, source=source)
    deadline = time.monotonic() + wait
    while True:  # another process settles it; the store is the only thing both can see
        settled = posted.settlement(store, answer_id)
        if settled.settled:
            if settled.refused is not None:
                raise RunStateError(f"the process driving run {row.id} refused the answer: {settled.refused}")
            log.info("run %s: answer to %s delivered by its owner", row.id, request_id)
            return
        if time.monotonic() >= deadline:
            raise RunStateError(
                f"the answer to {request_id!r} is posted, but the process driving run {row.id} "
                f"(pid {row.meta.get('parent_pid')}) did not take it within {wait:g} s; it will "
                "deliver it when it does, unless the question times out first")
        time.sleep(POLL_INTERVAL / 2)


async def deliver_posted(runs: LiveRuns, store: Store, scope: anyio.CancelScope, *,
                         interval: float = POLL_INTERVAL) -> None:
    """Deliver answers posted for the runs ``runs`` drives, every ``interval`` s (until ``scope``
    is cancelled), and settle each: delivered, or refused with the reason."""
    with scope:
        while True:
            await anyio.sleep(interval)
            owned = {live.run_id: live for live in runs.active()}
            if not owned:
                continue
            try:
                await _deliver(store, owned)
            except IsolaneError as exc:  # the store is away: the answers wait for the next look
                log.warning("answers posted for runs of this executor not read: %s", exc)


async def _deliver(store: Store, owned: dict[str, LiveRun]) -> None:
    for item in await anyio.to_thread.run_sync(posted.unsettled, store, list(owned)):
        live = owned[item.run_id]
        if live.monitor is None and not live.done:
            continue  # between two attempts: the next worker asks again, deliver to it then
        refused: str | None = None
        try:
            await answer(store, live, item.run_id, item.request_id, item.text, source=item.source)
        except IsolaneError as exc:
            refused = str(exc)
        await anyio.to_thread.run_sync(functools.partial(posted.settle, store, item.id, refused=refused))
