"""A run as the parent's API hands it out: what to run (:class:`RunSpec`), how it ended
(:class:`Outcome`), and the handle to follow, wait for, answer or cancel it (:class:`RunHandle`).

The :class:`~isolane.executor.executor.Executor` creates handles. A handle is a view, as
Temporal's ``WorkflowHandle`` is: it calls the executor's public methods (events, answers) and
its attempt's :class:`~isolane.executor.live.LiveRun` (done, wait, cancel).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from isolane.errors import ConfigError, WorkflowError
from isolane.schemas.envelope import Event
from isolane.schemas.limits import Limits
from isolane.schemas.redaction import secret_values
from isolane.workflow import WorkflowFn

if TYPE_CHECKING:
    from isolane.executor.display import RunSnapshot
    from isolane.executor.executor import Executor
    from isolane.executor.human import HumanRequest
    from isolane.executor.live import LiveRun
    from isolane.executor.monitor import RunMonitor, RunResult
    from isolane.tracking.rows import RunRow

__all__ = ["RESUMABLE_STATUSES", "STORED_OPTIONS", "TERMINAL_STATUSES", "Outcome", "RunHandle", "RunSpec"]

TERMINAL_STATUSES: Final = frozenset(
    {"completed", "failed", "crashed", "timed_out", "cancelled", "won", "lost"})


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
                   **{k: v for k, v in options.items() if k in STORED_OPTIONS})

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
STORED_OPTIONS: Final = ("limits", "timeout", "heartbeat_timeout", "cancel_grace", "capture_output",
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

    @classmethod
    def of(cls, run_id: str, result: RunResult) -> Outcome:
        """How the monitor (or recovery) concluded the run ended."""
        return cls(run_id=run_id, status=result.status, result=result.result, error=result.error,
                   error_type=result.error_type, traceback=result.traceback,
                   exit_code=result.exit_code)

    @classmethod
    def from_row(cls, row: RunRow) -> Outcome:
        """How a stored run ended (no traceback: it is in its ``run_failed`` event)."""
        return cls(run_id=row.id, status=row.status, result=row.result, error=row.error,
                   error_type=row.error_type, exit_code=row.exit_code)

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "won")

    def _repr_html_(self) -> str:
        """How the run ended, drawn in a notebook (:mod:`isolane.executor.display`)."""
        from isolane.executor.display import outcome_html

        return outcome_html(self)

    def raise_for_status(self) -> Any:
        """Return the result, or raise :class:`WorkflowError` describing why there is none."""
        if self.ok:
            return self.result
        raise WorkflowError(f"run {self.run_id} ended {self.status}: {self.error}",
                            remote_traceback=self.traceback)


class RunHandle:
    """A submitted (or stored) run: a thin view over the executor's public calls.

    A handle returned by ``submit``/``branch``/``resume`` follows that attempt of the run; one
    from :meth:`Executor.get <isolane.executor.executor.Executor.get>` for a run not live here
    is a stored view (``done`` at once, ``wait`` reads the stored outcome).
    """

    def __init__(self, executor: Executor, run_id: str, live: LiveRun | None = None) -> None:
        self._executor = executor
        self._live = live
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r})"

    @property
    def done(self) -> bool:
        return self._live is None or self._live.done

    @property
    def monitor(self) -> RunMonitor | None:
        """The monitor supervising the run's worker right now (its ``worker`` handle says where
        it runs); ``None`` while queued, after the end, or for a run not driven here."""
        return self._live.monitor if self._live is not None else None

    @property
    def executor(self) -> Executor:
        """The executor this handle calls."""
        return self._executor

    async def wait(self, *, progress: bool | None = None) -> Outcome:
        """Wait for the run to end (its last event stored) and return its :class:`Outcome`.

        ``progress`` shows the run meanwhile: updated in place in a notebook, a plain line on
        stderr per change elsewhere; ``None`` (default): on in a notebook only.
        """
        from isolane.executor import progress as shown

        if progress is None:
            progress = shown.in_notebook()
        if not progress:
            return await self._wait()
        return await shown.follow_with_progress(
            self._wait, self.snapshot, shown.Progress(notebook=shown.in_notebook()))

    async def _wait(self) -> Outcome:
        if self._live is not None:
            return await self._live.wait()
        store = self._executor.store
        return Outcome.from_row(await anyio.to_thread.run_sync(store.get_run, self.run_id))

    def snapshot(self) -> RunSnapshot:
        """What the notebook display shows of the run, read now (blocking; see
        :mod:`isolane.executor.display`)."""
        from isolane.executor.display import snapshot, store_options

        where = store_options(self._executor.home, self._executor.db_url)
        return snapshot(self._executor.store, self.run_id, where=where)

    def _repr_html_(self) -> str:
        """The run drawn in a notebook: status, DAG, cost, last events, a question waiting and
        the call that answers it (:mod:`isolane.executor.display`; reads the store)."""
        from isolane.executor.display import run_html

        return run_html(self.snapshot())

    async def cancel(self, reason: str = "cancelled by request") -> None:
        """Stop the run: a cooperative request, then its whole process tree is killed."""
        if self._live is not None:
            await self._live.cancel(reason)

    async def answer(self, request_id: str, text: str, *, source: str = "api") -> None:
        """Answer the run's pending ``human_input_request`` ``request_id`` with ``text``."""
        await self._executor.answer(self.run_id, request_id, text, source=source)

    async def pending_requests(self) -> list[HumanRequest]:
        """The run's human-input requests still waiting for an answer, oldest first."""
        return await self._executor.pending_requests(self.run_id)

    def events(self, since: int = 0, *, types: Iterable[str] | None = None,
               follow: bool = True) -> AsyncIterator[Event]:
        """Events with ``seq > since`` in order: stored ones first, then live ones as they commit.

        Ends when the run has ended and every event was yielded (or at once with
        ``follow=False`` once the stored ones are out).
        """
        return self._executor.events(self.run_id, since, types=types, follow=follow)
