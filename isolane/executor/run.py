"""A run as the parent's API hands it out: what to run (:class:`RunSpec`), how it ended
(:class:`Outcome`), and the handle to follow, wait for, answer or cancel it (:class:`RunHandle`).

The :class:`~isolane.executor.executor.Executor` creates handles; a handle calls back into it
for the store, the live-event hub and the run's monitor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from isolane.errors import ConfigError, WorkflowError
from isolane.executor import human
from isolane.executor.monitor import RunMonitor
from isolane.schemas.envelope import Event
from isolane.schemas.limits import Limits
from isolane.schemas.redaction import secret_values
from isolane.workflow import WorkflowFn

if TYPE_CHECKING:
    from isolane.executor.executor import Executor

__all__ = ["RESUMABLE_STATUSES", "TERMINAL_STATUSES", "Outcome", "RunHandle", "RunSpec"]

TERMINAL_STATUSES: Final = frozenset(
    {"completed", "failed", "crashed", "timed_out", "cancelled", "won", "lost"})
_READ_PAGE: Final = 2000


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What to run and how. Options are keyword-only; bad values fail here, with the rule."""

    workflow: str | WorkflowFn
    task: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    timeout: float | None = None
    heartbeat_timeout: float | None = 60.0
    cancel_grace: float = 3.0
    env: Mapping[str, str] = field(default_factory=dict)
    session_id: str | None = None
    capture_output: bool = True
    max_restarts: int = 0
    restart_backoff: float = 1.0
    snapshot_interval: float | None = 30.0
    #: Seconds a human-input question waits unless it says otherwise (None: until answered).
    human_timeout: float | None = None
    #: Resource limits of the run's processes (``Limits.unlimited()``: none); see SECURITY.md.
    limits: Limits = field(default_factory=Limits)
    #: Values redacted from every event, besides API keys, bearer tokens and credential env values.
    secrets: Sequence[str] = ()
    #: Parent environment variables the worker inherits (None: the executor's allow-list).
    env_allow: Iterable[str] | None = None

    @classmethod
    def from_stored(cls, workflow: str | WorkflowFn, task: str, options: Mapping[str, Any],
                    **fields: Any) -> RunSpec:
        """The spec of a stored run again (resume, branch, re-attach): its ``meta["options"]``,
        plus ``fields``."""
        return cls(workflow=workflow, task=task, **fields,
                   **{k: v for k, v in options.items() if k in _STORED_OPTIONS})

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", Limits.coerce(self.limits))
        object.__setattr__(self, "secrets", secret_values(secrets=self.secrets))
        if self.env_allow is not None:
            object.__setattr__(self, "env_allow", frozenset(self.env_allow))
        if self.human_timeout is not None and not self.human_timeout > 0:
            raise ConfigError(f"human_timeout must be positive seconds or None, got {self.human_timeout!r}")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts cannot be negative, got {self.max_restarts!r}")
        if self.restart_backoff < 0:
            raise ConfigError(f"restart_backoff cannot be negative, got {self.restart_backoff!r}")
        if self.snapshot_interval is not None and self.snapshot_interval <= 0:
            raise ConfigError(f"snapshot_interval must be positive seconds or None, got {self.snapshot_interval!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"timeout must be positive seconds, got {self.timeout!r}")
        if self.heartbeat_timeout is not None and self.heartbeat_timeout <= 0:
            raise ConfigError(f"heartbeat_timeout must be positive seconds, got {self.heartbeat_timeout!r}")
        if self.cancel_grace < 0:
            raise ConfigError(f"cancel_grace cannot be negative, got {self.cancel_grace!r}")
        if not isinstance(self.config, Mapping):
            raise ConfigError("config must be a mapping of option names to values")


#: RunSpec fields kept in ``runs.meta["options"]`` so another process can resume the run.
_STORED_OPTIONS: Final = ("limits", "timeout", "heartbeat_timeout", "cancel_grace", "capture_output",
                          "max_restarts", "restart_backoff", "snapshot_interval", "human_timeout")
#: Statuses :meth:`Executor.resume` accepts (plus unfinished runs no live parent owns).
RESUMABLE_STATUSES: Final = frozenset({"crashed", "failed", "timed_out", "cancelled"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended."""

    run_id: str
    status: str
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "won")

    def raise_for_status(self) -> Any:
        """Return the result, or raise :class:`WorkflowError` describing why there is none."""
        if self.ok:
            return self.result
        raise WorkflowError(f"run {self.run_id} ended {self.status}: {self.error}",
                            remote_traceback=self.traceback)


class RunHandle:
    """A submitted (or stored) run."""

    def __init__(self, executor: Executor, run_id: str, *, live: bool) -> None:
        self._executor = executor
        self.run_id = run_id
        self._live = live
        self._done = anyio.Event()
        self._outcome: Outcome | None = None
        self._monitor: RunMonitor | None = None
        self._cancel_requested: str | None = None
        self._queue_scope: anyio.CancelScope | None = None
        self._kill: Callable[[], None] | None = None  # set for adopted workers (no control pipe)
        self._resume_when_crashed = False
        if not live:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> Outcome:
        """Wait for the run to end (its last event stored) and return its :class:`Outcome`."""
        await self._done.wait()
        if self._outcome is None:
            self._outcome = await self._executor._stored_outcome(self.run_id)
        return self._outcome

    async def cancel(self, reason: str = "cancelled by request") -> None:
        """Stop the run: a cooperative request, then its whole process tree is killed."""
        if self._done.is_set():
            return
        self._cancel_requested = reason
        if self._monitor is not None:
            await self._monitor.cancel(reason)
        elif self._kill is not None:
            self._kill()
        elif self._queue_scope is not None:
            self._queue_scope.cancel()  # still waiting for a worker slot

    async def answer(self, request_id: str, text: str, *, source: str = "api") -> None:
        """Answer the run's pending ``human_input_request`` ``request_id`` with ``text``."""
        await human.answer(self, request_id, text, source=source)

    async def pending_requests(self) -> list[human.HumanRequest]:
        """The run's human-input requests still waiting for an answer, oldest first."""
        return await human.pending(self)

    async def events(self, since: int = 0, *, types: Iterable[str] | None = None,
                     follow: bool = True) -> AsyncIterator[Event]:
        """Events with ``seq > since`` in order: stored ones first, then live ones as they commit.

        Ends when the run has ended and every event was yielded (or at once with
        ``follow=False`` once the stored ones are out).
        """
        wanted = frozenset(types) if types is not None else None
        store = self._executor.store
        hub = self._executor._hub
        sub = hub.subscribe(self.run_id)
        last = since
        try:
            while True:
                # Forget any lag BEFORE reading the store: what is published from now on is
                # queued, what was committed before is in the page (overlap skipped by seq).
                # Resetting after the read would drop events committed in between.
                sub.reset()
                page = await anyio.to_thread.run_sync(
                    partial(store.events, self.run_id, after_seq=last, limit=_READ_PAGE))
                for event in page:
                    last = event.seq
                    if wanted is None or event.type in wanted:
                        yield event
                if len(page) == _READ_PAGE:
                    continue
                if not follow or (self._done.is_set() and not self._live):
                    return
                while not sub.lagged:
                    if self._done.is_set():
                        for event in sub.take():
                            if event.seq > last:
                                last = event.seq
                                if wanted is None or event.type in wanted:
                                    yield event
                        break
                    await sub.wait()
                    for event in sub.take():
                        if event.seq > last:
                            last = event.seq
                            if wanted is None or event.type in wanted:
                                yield event
                if self._done.is_set() and not sub.lagged:
                    # Final sweep: anything committed between our last page and the end.
                    tail = await anyio.to_thread.run_sync(
                        partial(store.events, self.run_id, after_seq=last))
                    for event in tail:
                        last = event.seq
                        if wanted is None or event.type in wanted:
                            yield event
                    return
        finally:
            hub.unsubscribe(sub)
