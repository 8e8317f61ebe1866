"""A list-backed event sink for tests: records what capture (or anything) emits."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["ListSink", "RecordedEvent"]


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One emitted event."""

    type: str
    data: dict[str, Any]
    node_id: str | None = None


class ListSink:
    """Keeps every emitted event in order (thread-safe); satisfies ``isolane.capture.Sink``."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self._lock = threading.Lock()

    def emit(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> None:
        """Append one event."""
        with self._lock:
            self.events.append(RecordedEvent(type_, data, node_id))

    def of(self, *types: str) -> list[RecordedEvent]:
        """The events of the given types, in order."""
        with self._lock:
            return [e for e in self.events if e.type in types]

    def types(self) -> list[str]:
        """The type of every event, in order."""
        with self._lock:
            return [e.type for e in self.events]
