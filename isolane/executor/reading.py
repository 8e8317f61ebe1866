"""Reading what an executor's runs report: one run's events, replayed then live, and the feed of
every run (the read half of :class:`~isolane.executor.executor.Executor`, which mixes it in).

::

    Executor.events(run_id, since)    replay_then_live (hub.py): stored pages, then live batches
    Executor.events(types=...)        Feed (feed.py): every run's committed events, bounded
    Executor.on_event(callback)       a Feed drained by a task of the executor's task group
    Executor.on_commit(observer)      each store write as a Commit (metrics)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import overload

from isolane.errors import ConfigError
from isolane.executor.feed import (
    DEFAULT_FEED_BUFFER,
    EventCallback,
    EventSubscription,
    Feed,
    FeedCursor,
)
from isolane.executor.hub import READ_PAGE, Batch, Hub, replay_then_live
from isolane.executor.live import LiveRuns
from isolane.executor.writer import Commit, StoreWriter
from isolane.schemas.envelope import Event
from isolane.tracking.store import Store

__all__ = ["EventReading"]


class EventReading:
    """The reading methods of :class:`~isolane.executor.executor.Executor` (a mixin: the
    executor provides the store, the hub, the writer and its live runs)."""

    _hub: Hub
    _writer: StoreWriter | None

    @property
    def store(self) -> Store:
        raise NotImplementedError

    def _open(self) -> LiveRuns:
        raise NotImplementedError

    def batches(self, run_id: str, since: int = 0, *, follow: bool = True,
                page_size: Callable[[], int] = lambda: READ_PAGE) -> AsyncGenerator[Batch, None]:
        """The run's committed events after ``since`` as shared batches (see
        :func:`~isolane.executor.hub.replay_then_live`), following a run live here until it ends.

        Close the iterator (``contextlib.aclosing``) when leaving it early.
        """
        live = self._open().get(run_id)
        ended = (lambda: live.done) if follow and live is not None else None
        return replay_then_live(self.store, self._hub, run_id, since, ended=ended,
                                page_size=page_size)

    @overload
    def events(self, run_id: None = None, since: FeedCursor | None = None, *,
               types: Iterable[str] | None = None, buffer: int = DEFAULT_FEED_BUFFER) -> Feed: ...

    @overload
    def events(self, run_id: str, since: int = 0, *, types: Iterable[str] | None = None,
               follow: bool = True) -> AsyncIterator[Event]: ...

    def events(self, run_id: str | None = None, since: int | FeedCursor | None = None, *,
               types: Iterable[str] | None = None, follow: bool = True,
               buffer: int = DEFAULT_FEED_BUFFER) -> AsyncIterator[Event]:
        """One run's events after ``since``, in order: stored ones, then live ones as they commit
        (until the run has ended; ``follow=False``: the stored ones only).

        Without ``run_id``: the feed of every run of this executor (:class:`Feed`), each event
        once after it is committed, in ``seq`` order per run, until the executor closes; a reader
        more than ``buffer`` events behind catches up from the store (the writer never waits).
        """
        if run_id is None:
            if since is not None and not isinstance(since, FeedCursor):
                raise ConfigError("the feed of every run takes a FeedCursor as `since` "
                                  "(from Feed.cursor()); a seq number needs a run_id")
            self._open()
            return Feed(self.store, self._hub, types=types, since=since, buffer=buffer)
        if isinstance(since, FeedCursor):
            raise ConfigError("a run's events take a seq number as `since`, not a FeedCursor")
        return self._run_events(run_id, since or 0, types=types, follow=follow)

    def on_event(self, callback: EventCallback, *, types: Iterable[str] | None = None,
                 buffer: int = DEFAULT_FEED_BUFFER) -> EventSubscription:
        """Call ``callback`` with every committed event of this executor's runs (of ``types``),
        in a task of its own, from now until the subscription or the executor is closed; see
        :class:`~isolane.executor.feed.EventSubscription`."""
        subscription = EventSubscription(self.events(types=types, buffer=buffer), callback)
        self._open().start_soon(subscription.run)
        return subscription

    def on_commit(self, observer: Callable[[Commit], None]) -> Callable[[], None]:
        """Call ``observer`` after each store write (metrics); returns the function that stops it.
        It runs on the writer's path: it must only count."""
        self._open()
        assert self._writer is not None
        observers = self._writer.observers
        observers.append(observer)
        return lambda: observers.remove(observer) if observer in observers else None

    def writer_backlog(self) -> int:
        """Writes queued for the store writer and not yet taken (0 when it keeps up)."""
        self._open()
        assert self._writer is not None
        return self._writer.backlog

    async def _run_events(self, run_id: str, since: int, *, types: Iterable[str] | None,
                          follow: bool) -> AsyncIterator[Event]:
        wanted = frozenset(types) if types is not None else None
        async with aclosing(self.batches(run_id, since, follow=follow)) as batches:
            async for batch in batches:
                for event in batch.events():
                    if wanted is None or event.type in wanted:
                        yield event
