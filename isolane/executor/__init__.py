"""The parent: the Executor a service embeds, and what it runs on (see :mod:`isolane.executor.executor`).

::

    executor.py  Executor, the facade          run.py     RunSpec, Outcome, RunHandle (a view)
    live.py      a live run's state, one settle()   monitor.py one worker's frames, exit, watchdog
    writer.py    the one database writer        hub.py     live fan-out, replay-then-live
    feed.py      every run's events, one feed
    recovery.py  runs whose parent died         racing.py  branches raced from one node
    human.py     answering questions            sync.py    a blocking facade for scripts
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "TERMINAL_STATUSES": "isolane.executor.run",
    "Outcome": "isolane.executor.run",
    "RunHandle": "isolane.executor.run",
    "RunSpec": "isolane.executor.run",
    "Executor": "isolane.executor.executor",
    "EventSubscription": "isolane.executor.feed",
    "Feed": "isolane.executor.feed",
    "FeedCursor": "isolane.executor.feed",
    "SyncExecutor": "isolane.executor.sync",
    "SyncRun": "isolane.executor.sync",
})

if TYPE_CHECKING:
    from isolane.executor.executor import Executor
    from isolane.executor.feed import EventSubscription, Feed, FeedCursor
    from isolane.executor.run import TERMINAL_STATUSES, Outcome, RunHandle, RunSpec
    from isolane.executor.sync import SyncExecutor, SyncRun

__all__ = [
    "TERMINAL_STATUSES",
    "EventSubscription",
    "Executor",
    "Feed",
    "FeedCursor",
    "Outcome",
    "RunHandle",
    "RunSpec",
    "SyncExecutor",
    "SyncRun",
]
