"""How a run ended, in the worker's own words: its terminal event, read the one way.

::

    run_completed {result}                    ─▶ completed
    run_failed    {error, error_type, traceback} ─▶ failed
    run_cancelled {reason}                    ─▶ cancelled

The parent's monitor (a live worker), recovery (an orphaned one) and a spool import all decide
from the last terminal event a worker wrote; :func:`verdict` is that decision, once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from isolane.schemas.envelope import WireEvent
from isolane.schemas.payloads import TERMINAL_EVENT_TYPES

__all__ = ["Verdict", "last_terminal", "verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome a terminal event reports."""

    status: str  # "completed" | "failed" | "cancelled"
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None


def last_terminal(events: Iterable[WireEvent]) -> WireEvent | None:
    """The last terminal event (``run_completed``/``run_failed``/``run_cancelled``), if any."""
    found: WireEvent | None = None
    for event in events:
        if event.type in TERMINAL_EVENT_TYPES:
            found = event
    return found


def verdict(terminal: WireEvent) -> Verdict:
    """What ``terminal`` (a terminal event) says about how its run ended."""
    data: dict[str, Any] = orjson.loads(bytes(terminal.data))
    if terminal.type == "run_completed":
        return Verdict("completed", result=data.get("result"))
    if terminal.type == "run_failed":
        return Verdict("failed", error=data.get("error"), error_type=data.get("error_type"),
                       traceback=data.get("traceback"))
    if terminal.type == "run_cancelled":
        return Verdict("cancelled", error=data.get("reason"), error_type="cancelled")
    raise ValueError(f"{terminal.type!r} is not a terminal event type")
