"""The parent's single database writer: group commit, retry on outage, then publish.

::

    run supervisors ──WriteItem──▶ [bounded stream] ──▶ StoreWriter.run()
                                    (back-pressure:      takes every item waiting (≤ max_batch rows),
                                     a full stream         writes them in ONE transaction (thread),
                                     stops the readers)    retries with backoff while the store is
                                                           unreachable, then publishes each item's
                                                           rows, as stored, to the Hub (no decoding:
                                                           see isolane.executor.hub) and sets its
                                                           ``committed`` event

While a write is in flight more items queue up, so batches grow with load (group commit) and an
idle run's events still reach the store within one round trip.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sqlalchemy.exc import DBAPIError

from isolane.errors import StoreUnavailable
from isolane.executor.hub import Hub
from isolane.schemas.envelope import EventRow
from isolane.tracking.rows import DiagnosticRow
from isolane.tracking.store import Store

__all__ = ["StoreWriter", "WriteItem"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WriteItem:
    """Rows to persist together; ``committed`` is set once they are durable."""

    run_id: str | None = None
    events: list[EventRow] = field(default_factory=list)
    diagnostics: list[DiagnosticRow] = field(default_factory=list)
    run_updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    committed: anyio.Event | None = None


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

    async def run(self) -> None:
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
                await self._write(batch)

    async def _write(self, batch: list[WriteItem]) -> None:
        events: list[EventRow] = []
        diagnostics: list[DiagnosticRow] = []
        updates: dict[str, dict[str, Any]] = {}
        for item in batch:
            events.extend(item.events)
            diagnostics.extend(item.diagnostics)
            for run_id, fields in item.run_updates.items():
                updates.setdefault(run_id, {}).update(fields)
        delay = 0.05
        outage_started: float | None = None
        last_error = ""
        while True:
            try:
                await anyio.to_thread.run_sync(
                    lambda: self.store.write_batch(events=events, diagnostics=diagnostics,
                                                   run_updates=updates))
                break
            except (DBAPIError, StoreUnavailable) as exc:
                # Events are also in each run's spool; holding the batch back-pressures the runs.
                if outage_started is None:
                    outage_started = time.time()
                    log.warning("store write failed, retrying (events are safe in the spools): %s",
                                str(exc).splitlines()[0])
                last_error = str(exc).splitlines()[0][:200]
                await anyio.sleep(delay)
                delay = min(delay * 2, self._retry_max_delay)
        if outage_started is not None:
            seconds = time.time() - outage_started
            log.warning("store is back after %.1f s", seconds)
            runs: set[str | None] = set()
            runs.update(row[0] for row in events)
            runs.update(updates)
            runs.update(d.run_id for d in diagnostics)
            runs = runs or {None}
            await anyio.to_thread.run_sync(lambda: self.store.write_batch(diagnostics=[
                DiagnosticRow(run_id, time.time(), "store_outage",
                              f"store unavailable for {seconds:.1f} s; writes retried: {last_error}")
                for run_id in runs]))
        for item in batch:
            if item.run_id is not None:
                # The rows as stored (data still JSON text): readers build what they need, once.
                self.hub.publish(item.run_id, item.events)
            if item.committed is not None:
                item.committed.set()
