"""Live fan-out of committed events to subscribers, bounded per subscriber.

::

    StoreWriter ──commit──▶ Hub.publish(run_id, events) ──▶ Batch ──▶ Subscription (bounded) ──▶ reader
                                                             │           │ overflow: marked lagged,
                                      one per publish, shared │           ▼ emptied
                                      by every subscriber;    │  reader catches up from the Store by seq
                                      JSON text encoded once ─┘  (Batch.lines(), on first request)

A subscriber only ever sees committed events. A slow subscriber never grows memory past its bound
and never slows the run: it is marked ``lagged`` and re-reads what it missed from the store, so
the stream it yields has no gap and no duplicate.

Text readers (the WebSocket) take whole :class:`Batch` objects and send :meth:`Batch.lines`: the
envelopes are encoded once per published batch, however many clients follow the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import anyio

from isolane.schemas.envelope import Event

__all__ = ["Batch", "Hub", "Subscription", "encode_lines"]


def encode_lines(events: Sequence[Event]) -> list[str]:
    """Each event's envelope as JSON text (:meth:`Event.to_json`), one string per event."""
    return [event.to_json().decode() for event in events]


class Batch:
    """Events of one run committed together, in ``seq`` order; shared, never mutated."""

    __slots__ = ("_lines", "events")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self._lines: list[str] | None = None

    def __len__(self) -> int:
        return len(self.events)

    def lines(self) -> list[str]:
        """The envelopes as JSON text, encoded on the first call and shared afterwards.

        The list is shared by every caller: slice it, never change it.
        """
        if self._lines is None:
            self._lines = encode_lines(self.events)
        return self._lines


class Subscription:
    """One reader's bounded window on a run's live events."""

    def __init__(self, run_id: str, *, max_events: int) -> None:
        self.run_id = run_id
        self.lagged = False
        self._max = max_events
        self._queue: deque[Batch] = deque()
        self._queued = 0  # events in _queue
        self._ready = anyio.Event()

    def _push(self, batch: Batch) -> None:
        if self.lagged:
            self._ready.set()
            return
        self._queue.append(batch)
        self._queued += len(batch)
        if self._queued > self._max:
            self._queue.clear()
            self._queued = 0
            self.lagged = True
        self._ready.set()

    def take(self) -> list[Event]:
        """Every event queued now (may be empty)."""
        return [event for batch in self.take_batches() for event in batch.events]

    def take_batches(self) -> list[Batch]:
        """Every batch queued now, oldest first (may be empty)."""
        batches = list(self._queue)
        self._queue.clear()
        self._queued = 0
        return batches

    def reset(self) -> None:
        """Forget the lag after the reader caught up from the store."""
        self.lagged = False
        self._queue.clear()
        self._queued = 0

    def wake(self) -> None:
        self._ready.set()

    async def wait(self) -> None:
        """Wait until something was published (or :meth:`wake` was called) since the last wait."""
        if not self._queue and not self.lagged:
            await self._ready.wait()
        self._ready = anyio.Event()


class Hub:
    """Subscriptions by run id. Lives on the executor's event loop."""

    def __init__(self, *, max_events_per_subscriber: int = 10_000) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._max = max_events_per_subscriber

    def subscribe(self, run_id: str) -> Subscription:
        sub = Subscription(run_id, max_events=self._max)
        self._subs.setdefault(run_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.run_id]

    def wants(self, run_id: str) -> bool:
        return run_id in self._subs

    def publish(self, run_id: str, events: list[Event]) -> None:
        """Hand ``events`` (committed, in ``seq`` order) to every subscriber of the run, as one batch."""
        subs = self._subs.get(run_id)
        if not subs or not events:
            return
        batch = Batch(events)
        for sub in subs:
            sub._push(batch)

    def wake(self, run_id: str) -> None:
        """Wake a run's readers without events (the run ended)."""
        for sub in self._subs.get(run_id, ()):
            sub.wake()
