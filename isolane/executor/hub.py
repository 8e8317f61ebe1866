"""Live fan-out of committed events to subscribers, bounded per subscriber.

::

    StoreWriter ──commit──▶ Hub.publish(run_id, events) ──▶ Subscription (bounded deque) ──▶ reader
                                                               │ overflow: marked lagged, emptied
                                                               ▼
                                                reader catches up from the Store by seq

A subscriber only ever sees committed events. A slow subscriber never grows memory past its bound
and never slows the run: it is marked ``lagged`` and re-reads what it missed from the store, so
the stream it yields has no gap and no duplicate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import anyio

from isolane.schemas.events import Event

__all__ = ["Hub", "Subscription"]


class Subscription:
    """One reader's bounded window on a run's live events."""

    def __init__(self, run_id: str, *, max_events: int) -> None:
        self.run_id = run_id
        self.lagged = False
        self._max = max_events
        self._queue: deque[Event] = deque()
        self._ready = anyio.Event()

    def _push(self, events: Iterable[Event]) -> None:
        if self.lagged:
            self._ready.set()
            return
        self._queue.extend(events)
        if len(self._queue) > self._max:
            self._queue.clear()
            self.lagged = True
        self._ready.set()

    def take(self) -> list[Event]:
        """Everything queued now (may be empty)."""
        items = list(self._queue)
        self._queue.clear()
        return items

    def reset(self) -> None:
        """Forget the lag after the reader caught up from the store."""
        self.lagged = False
        self._queue.clear()

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
        for sub in self._subs.get(run_id, ()):
            sub._push(events)

    def wake(self, run_id: str) -> None:
        """Wake a run's readers without events (the run ended)."""
        for sub in self._subs.get(run_id, ()):
            sub.wake()
