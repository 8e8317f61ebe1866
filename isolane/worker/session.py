"""Session state inside the worker: context variables and append-only logs, saved as deltas.

::

    workflow ── ctx.state["k"] = v ──▶ SessionState (dirty keys)       ┐
             ── ctx.log("chat", msg) ─▶ SessionState (log lengths)     ├─▶ take_delta() ──▶ state_snapshot
    node completed / every N seconds / ctx.snapshot() ────────────────┘     {base_seq, context, removed, logs}

A snapshot carries only what changed since the previous one, so saving costs O(delta) however
long the history is. The parent folds snapshots in seq order
(:func:`isolane.tracking.state.fold_snapshots`) to rebuild
the state a resumed worker starts from.

Context variables change by assignment: mutating a value in place (``ctx.state["l"].append(x)``)
is not seen; assign it again, or use a log for append-only data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["ResumeInfo", "SessionState"]


class SessionState(MutableMapping[str, Any]):
    """The workflow's context variables plus named append-only logs, with change tracking."""

    def __init__(self, context: Mapping[str, Any] | None = None,
                 logs: Mapping[str, list[Any]] | None = None) -> None:
        self._lock = threading.RLock()
        self._data: dict[str, Any] = dict(context or {})
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._logs: dict[str, list[Any]] = {k: list(v) for k, v in (logs or {}).items()}
        self._marks: dict[str, int] = {k: len(v) for k, v in self._logs.items()}

    # MutableMapping
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._dirty.add(key)
            self._removed.discard(key)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._data[key]
            self._dirty.discard(key)
            self._removed.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    # logs
    def append(self, log: str, item: Any) -> None:
        with self._lock:
            self._logs.setdefault(log, []).append(item)

    def log(self, log: str) -> list[Any]:
        """A copy of the named log (empty if it does not exist)."""
        with self._lock:
            return list(self._logs.get(log, ()))

    @property
    def logs(self) -> dict[str, list[Any]]:
        with self._lock:
            return {k: list(v) for k, v in self._logs.items()}

    def take_delta(self) -> dict[str, Any] | None:
        """What changed since the last call, as a ``state_snapshot`` payload (``None``: nothing)."""
        with self._lock:
            logs = {k: v[self._marks.get(k, 0):] for k, v in self._logs.items()
                    if len(v) != self._marks.get(k, 0)}
            if not (self._dirty or self._removed or logs):
                return None
            delta: dict[str, Any] = {"context": {k: self._data[k] for k in self._dirty}}
            if self._removed:
                delta["removed"] = sorted(self._removed)
            if logs:
                delta["logs"] = logs
            self._dirty.clear()
            self._removed.clear()
            self._marks = {k: len(v) for k, v in self._logs.items()}
            return delta


class ResumeInfo:
    """What a resumed worker is told: finished nodes (with their results), state and phase."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.completed: dict[str, Any] = dict(data.get("completed", {}))
        self.context: dict[str, Any] = dict(data.get("context", {}))
        self.logs: dict[str, list[Any]] = {k: list(v) for k, v in data.get("logs", {}).items()}
        self.phase: str | None = data.get("phase")
        self.last_seq: int = int(data.get("last_seq", 0))
        self.snapshot_seq: int = int(data.get("snapshot_seq", 0))
        self.from_node: str | None = data.get("from_node")

    def is_completed(self, node_id: str) -> bool:
        return node_id in self.completed
