"""The parent's single database writer: group commit, retry on outage, isolate refused rows.

::

    run supervisors ──WriteItem──▶ [bounded stream] ──▶ StoreWriter.run()
                                    (back-pressure:      takes every item waiting (≤ max_batch rows),
                                     a full stream         writes them in ONE transaction (thread),
                                     stops the readers)    then publishes each item's rows, as
                                                           stored, to the Hub (no decoding: see
                                                           isolane.executor.hub) and sets its
                                                           ``committed`` event

While a write is in flight more items queue up, so batches grow with load (group commit) and an
idle run's events still reach the store within one round trip.

A write that fails is one of two things, told apart by the store (see
:func:`isolane.tracking._engine.transaction`):

* **an outage** (:class:`StoreUnavailable`: connection refused or lost, server shutting down, a
  timeout, a lock, a full disk): the same rows are written again with backoff, for as long as it
  takes. The events are safe in the runs' spools and the full stream back-pressures the runs. A
  ``store_outage`` diagnostic records how long it lasted. Once the executor is closing
  (:meth:`StoreWriter.give_up_after`), an outage longer than its ``shutdown_grace`` ends the
  writing: what is queued, and what comes later, is counted and dropped, its waiters released,
  and one warning says so; recovery imports those events from the spools later.
* **a refusal** (:class:`StoreRefused`: the database will never take one of the rows, e.g. a value
  out of range; or :class:`RunNotFound`): the batch is split, runs apart first, then in halves,
  until every row the database takes is stored and each refused row is alone. A refused row
  becomes a ``store_refused`` diagnostic naming its run, what it was and the database's reason;
  the event itself stays in the run's spool. A refused row never holds back the batch or another
  run. Isolating rows costs transactions, so a run gets a budget of rows isolated one by one per
  write; past it, the rest of its failing events in that write are refused together (one
  diagnostic with their seq range).
  (Text the database cannot hold, U+0000, never gets here: the store writes it as U+FFFD, see
  :mod:`isolane.tracking.storable`.)
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sqlalchemy.exc import DBAPIError

from isolane.errors import IsolaneError, RunNotFound, StoreRefused, StoreUnavailable
from isolane.executor.batch import REFUSAL_BUDGET, Rows
from isolane.executor.hub import Hub
from isolane.schemas.envelope import EventRow
from isolane.tracking.rows import DiagnosticRow
from isolane.tracking.storable import storable_events
from isolane.tracking.store import Store

__all__ = ["Commit", "StoreWriter", "WriteItem"]

log = logging.getLogger(__name__)

#: What makes a write retried as it is (the store may come back).
_OUTAGE = (StoreUnavailable, DBAPIError)
#: What makes a write split until the rows the database refuses are alone.
_REFUSED = (StoreRefused, RunNotFound)

@dataclass(slots=True)
class WriteItem:
    """Rows to persist together; ``committed`` is set once they are durable (or, for a row the
    database refused, recorded as a ``store_refused`` diagnostic)."""

    run_id: str | None = None
    events: Sequence[EventRow] = field(default_factory=list)
    diagnostics: list[DiagnosticRow] = field(default_factory=list)
    run_updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    committed: anyio.Event | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """One write of the writer, as its observers see it (metrics): called on the event loop
    right after the rows were published, so an observer must be quick and must not block."""

    #: How long the write took, retries and refused-row isolation included.
    seconds: float
    #: Events stored (refused ones not counted).
    events: int
    #: Run fields written, by run id (``status`` tells a worker start, a crash, an end).
    run_updates: Mapping[str, Mapping[str, Any]]
    #: The kind of each diagnostic written (``restart``, ``store_refused``, ...).
    diagnostic_kinds: Sequence[str]


class StoreWriter:
    """Owns every write to the store made by the executor."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        *,
        max_batch_rows: int = 10_000,
        max_pending_items: int = 4,
        retry_max_delay: float = 5.0,
    ) -> None:
        self.store = store
        self.hub = hub
        self._max_rows = max_batch_rows
        self._retry_max_delay = retry_max_delay
        self._send: MemoryObjectSendStream[WriteItem]
        self._recv: MemoryObjectReceiveStream[WriteItem]
        self._send, self._recv = anyio.create_memory_object_stream[WriteItem](max_pending_items)
        self.rows_written = 0
        self.batches = 0
        #: Rows the database refused for their content (each recorded as a diagnostic).
        self.rows_refused = 0
        #: Called with a :class:`Commit` after each write (errors are logged, never raised).
        self.observers: list[Callable[[Commit], None]] = []
        #: Set once the writer stopped waiting for an unreachable store (:meth:`give_up_after`).
        self.gave_up = anyio.Event()
        self._grace: tuple[float, float] | None = None  # (since, seconds), monotonic
        self._wake = anyio.Event()  # cuts a retry's backoff short when the grace is set

    @property
    def backlog(self) -> int:
        """Items queued for the writer and not yet taken into a write."""
        return self._recv.statistics().current_buffer_used

    async def put(self, item: WriteItem) -> None:
        """Queue ``item``; waits while the writer is behind (back-pressure)."""
        await self._send.send(item)

    async def put_and_wait(self, item: WriteItem) -> None:
        """Queue ``item`` and return once it is committed."""
        item.committed = anyio.Event()
        await self._send.send(item)
        await item.committed.wait()

    async def close(self) -> None:
        """No more items; :meth:`run` returns after writing what is queued."""
        await self._send.aclose()

    def give_up_after(self, seconds: float) -> None:
        """From now on, stop writing once the store has been unreachable for ``seconds`` (counted
        from now at the earliest): the executor's exit calls it so that an outage cannot hold it
        (the events are safe in the runs' spools). While the store answers, nothing changes:
        every queued write is still made."""
        self._grace = (time.monotonic(), seconds)
        self._wake.set()

    async def run(self) -> None:
        """Write until :meth:`close`; a cancel from outside never stops it, because the runs
        still ending (shielded, see :class:`~isolane.executor.live.LiveRuns`) settle through it."""
        try:
            with anyio.CancelScope(shield=True):
                await self._run()
        finally:
            self.hub.close()  # nothing more will commit: the executor-wide feeds end

    async def _run(self) -> None:
        async with self._recv:
            while True:
                try:
                    first = await self._recv.receive()
                except anyio.EndOfStream:
                    return
                batch = [first]
                rows = len(first.events)
                while rows < self._max_rows:
                    try:
                        item = self._recv.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    batch.append(item)
                    rows += len(item.events)
                try:
                    await self._write(batch)
                except _GiveUp as exc:
                    await self._drop(batch, exc.seconds)
                    return

    async def _drop(self, batch: list[WriteItem], seconds: float) -> None:
        """Given up on the store: count ``batch`` and every item until :meth:`close` as not
        written, release their waiters (no sender may block: the runs still have to end), and
        say so once."""
        self.gave_up.set()
        dropped = _Dropped()
        dropped.add(batch)
        async for item in self._recv:
            dropped.add([item])
        log.warning(
            "the store stayed unreachable for %.1f s while the executor was closing (its "
            "shutdown_grace): %s of %d run(s) were not written; the events are safe in the runs' "
            "spools, and `isolane recover` (or Executor(recover=True)) imports them and settles "
            "those runs once the store is back", seconds, dropped, len(dropped.runs))

    async def _write(self, batch: list[WriteItem]) -> None:
        merged: list[EventRow] = []
        diagnostics: list[DiagnosticRow] = []
        updates: dict[str, dict[str, Any]] = {}
        for item in batch:
            merged.extend(item.events)
            diagnostics.extend(item.diagnostics)
            for run_id, fields in item.run_updates.items():
                updates.setdefault(run_id, {}).update(fields)
        # The stored form, searched once here: what is published below is what readers find
        # later, and the store need not search it again.
        events = storable_events(merged)
        if events is not merged:
            start = 0
            for item in batch:
                item.events, start = events[start:start + len(item.events)], start + len(item.events)
        rows = Rows(events, diagnostics, updates)
        started = time.perf_counter()
        outage = _Outage()
        refused = await self._store(rows, outage)
        if outage.started is not None:
            await self._record_outage(rows, outage)
        self.rows_written += len(rows.events) - len(refused)
        self.batches += 1
        written: list[tuple[str, Sequence[EventRow]]] = []
        for item in batch:
            if item.run_id is not None:
                # The rows as stored (data still JSON text): readers build what they need, once.
                stored: Sequence[EventRow] = item.events
                if refused:
                    stored = [row for row in stored if (row[0], row[1]) not in refused]
                written.append((item.run_id, stored))
        self.hub.publish_write(written)  # as one write: a feed's bound is checked between writes
        for item in batch:
            if item.committed is not None:
                item.committed.set()
        if self.observers:
            self._observe(Commit(time.perf_counter() - started, len(rows.events) - len(refused),
                                 updates, [d.kind for d in diagnostics]))

    def _observe(self, commit: Commit) -> None:
        for observer in list(self.observers):
            try:
                observer(commit)
            except Exception:  # an observer's bug must never stop the writer
                log.exception("a store-writer observer failed (ignored)")

    async def _store(self, rows: Rows, outage: _Outage) -> set[tuple[str, int]]:
        """Write ``rows``, splitting around refused ones; return the keys of refused events."""
        refused: set[tuple[str, int]] = set()
        by_run: Counter[str | None] = Counter()  # rows refused one by one, per run
        pending = [rows]  # a stack, so pieces are written in order
        while pending:
            piece = pending.pop()
            try:
                await self._write_retrying(piece, outage)
                continue
            except _REFUSED as exc:
                reason = exc.reason if isinstance(exc, StoreRefused) else str(exc)
            run_id = piece.one_run()
            # Isolating a row costs a few transactions per halving; a run whose rows are refused
            # again and again (a hostile worker) gets a budget, then the rest of its failing
            # pieces are refused whole, so it cannot keep the writer from other runs.
            halves = None if by_run[run_id] >= REFUSAL_BUDGET and run_id is not None \
                else piece.split()
            if halves is not None:
                pending.extend(reversed(halves))
                continue
            by_run[run_id] += 1
            self.rows_refused += max(len(piece.events), 1)
            refused.update((row[0], row[1]) for row in piece.events)
            await self._record_refusal(piece, reason, outage)
        return refused

    async def _record_refusal(self, piece: Rows, reason: str, outage: _Outage) -> None:
        diagnostic = piece.refusal(reason)
        log.warning("run %s: %s", diagnostic.run_id, diagnostic.reason)
        for attempt in (diagnostic, replace(diagnostic, excerpt="")):
            try:
                await self._write_retrying(Rows(diagnostics=[attempt]), outage)
                return
            except _REFUSED:
                continue  # the excerpt may be what the database refuses: once more without it
        log.error("run %s: the database refused even the diagnostic of a refused row: %s",
                  diagnostic.run_id, diagnostic.reason)

    async def _write_retrying(self, rows: Rows, outage: _Outage) -> None:
        """Write ``rows`` in one transaction, again and again while the store is unreachable."""
        delay = 0.05
        while True:
            self._wake = anyio.Event()
            try:
                await anyio.to_thread.run_sync(lambda: self.store.write_batch(
                    events=rows.events, diagnostics=rows.diagnostics, run_updates=rows.updates,
                    storable=True))
                return
            except _REFUSED:
                raise
            except _OUTAGE as exc:
                # Events are also in each run's spool; holding the batch back-pressures the runs.
                first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
                if outage.started is None:
                    outage.started, outage.since = time.time(), time.monotonic()
                    log.warning("store write failed, retrying (events are safe in the spools): %s",
                                first_line)
                outage.last_error = first_line[:200]
                wait = delay
                if self._grace is not None:  # the executor is closing: wait only so long
                    since = max(outage.since, self._grace[0])
                    wait = since + self._grace[1] - time.monotonic()
                    if wait <= 0:
                        raise _GiveUp(time.monotonic() - since) from exc
                    wait = min(wait, delay)
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                delay = min(delay * 2, self._retry_max_delay)

    async def _record_outage(self, rows: Rows, outage: _Outage) -> None:
        assert outage.started is not None
        seconds = time.time() - outage.started
        log.warning("store is back after %.1f s", seconds)
        runs: set[str | None] = set()
        runs.update(row[0] for row in rows.events)
        runs.update(rows.updates)
        runs.update(d.run_id for d in rows.diagnostics)
        diagnostics = [DiagnosticRow(run_id, time.time(), "store_outage",
                                     f"store unavailable for {seconds:.1f} s; writes retried: "
                                     f"{outage.last_error}") for run_id in (runs or {None})]
        try:
            await self._write_retrying(Rows(diagnostics=diagnostics), _Outage())
        except _REFUSED as exc:
            log.error("the database refused the store_outage diagnostic: %s", exc)


@dataclass(slots=True)
class _Outage:
    """When the store first failed during one batch (wall clock, and monotonic), its last error."""

    started: float | None = None
    since: float = 0.0
    last_error: str = ""


class _GiveUp(IsolaneError):
    """The store stayed unreachable past the closing executor's grace (never leaves the writer)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"store unreachable for {seconds:.1f} s")
        self.seconds = seconds


@dataclass(slots=True)
class _Dropped:
    """What the writer did not write because it gave up; its waiters are released all the same."""

    events: int = 0
    updates: int = 0
    diagnostics: int = 0
    runs: set[str] = field(default_factory=set)

    def add(self, items: Sequence[WriteItem]) -> None:
        for item in items:
            self.events += len(item.events)
            self.updates += len(item.run_updates)
            self.diagnostics += len(item.diagnostics)
            self.runs.update(row[0] for row in item.events)
            self.runs.update(item.run_updates)
            if item.committed is not None:
                item.committed.set()

    def __str__(self) -> str:
        return (f"{self.events} events, {self.updates} run-row updates and {self.diagnostics} "
                "diagnostics")
