"""The worker backend interface: where a run's worker process lives and how the parent reaches it.

::

    Executor ──create_backend(name)──▶ BACKENDS[name](...) ──▶ WorkerBackend   (registry.py)
    WorkerBackend.launch(spec) ──▶ WorkerHandle
        records()        worker → parent: spans of complete spool records (bytes only), in order
        wait()           how the worker ended: exit code and, when the backend knows it, a cause
        request_cancel() cooperative stop (control message)          parent → worker
        send_control()   any control message (human answers)          parent → worker
        kill_tree()      forced: the worker and everything it started
        aclose()         release what the handle holds (after the end)

:class:`~isolane.executor.monitor.RunMonitor` is the only user of a handle: it runs ``wait()`` in
one task and iterates ``records()`` in another, decodes and validates every record itself (a
backend never interprets what a worker sent), and decides the run's status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from isolane.schemas.spec import WorkerSpec
    from isolane.schemas.spool import SpoolSpan

__all__ = ["WorkerBackend", "WorkerExit", "WorkerHandle"]


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """How a worker process ended, as its backend saw it."""

    #: The process's exit code (negative: the signal that killed it); None when unknown
    #: (the node or the actor holding it was lost with it).
    exit_code: int | None
    #: Why, when the backend knows more than the exit code (``"ray node 3f2a… died"``).
    cause: str | None = None


@runtime_checkable
class WorkerHandle(Protocol):
    """One started worker, as the parent monitor drives it.

    Contract (the backend suite in ``tests/test_backends.py`` pins it down):

    - ``records()`` yields the worker's spool records in the order it wrote them, in spans of
      complete lines (:class:`~isolane.schemas.spool.SpoolSpan`, with what was skipped as
      problems); it may be iterated once. It ends once the worker has exited (``wait()``
      returned) and every complete record it wrote has been delivered: an event whose
      ``emit()`` returned is delivered even when the worker was SIGKILLed the next instant.
    - ``wait()`` may be awaited by several tasks; it returns when the process has ended (a
      SIGKILL is noticed within milliseconds locally, a lost node within Ray's detection time).
    - ``request_cancel``, ``send_control`` and ``kill_tree`` may be called at any time, also
      after the end (they then do nothing).
    """

    @property
    def run_id(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def create_time(self) -> float: ...
    @property
    def location(self) -> str:
        """Where the worker runs, for people: ``"local"``, ``"ray node 3f2a… (10.0.0.5)"``."""
        ...

    def records(self) -> AsyncIterator[SpoolSpan]: ...
    async def wait(self) -> WorkerExit: ...
    def request_cancel(self) -> None: ...
    def send_control(self, message: Mapping[str, Any]) -> None: ...
    async def kill_tree(self) -> int:
        """SIGKILL the worker and every process it started; return how many were signalled."""
        ...
    async def aclose(self) -> None: ...


@runtime_checkable
class WorkerBackend(Protocol):
    """Starts workers somewhere. ``start``/``close`` block (call them from a thread)."""

    name: str

    def start(self) -> None: ...
    async def launch(self, spec: WorkerSpec) -> WorkerHandle: ...
    def close(self) -> None: ...
