"""Importing a run's spool into the store: the rows the database lacks, after a crash of either side.

The spool (:mod:`isolane.schemas.spool`) holds at least what the parent received; the store
ignores ``(run_id, seq)`` it has, so importing twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from isolane.schemas.envelope import WireEvent
from isolane.schemas.outcome import last_terminal
from isolane.schemas.spool import SpoolTail
from isolane.tracking.rows import DiagnosticRow
from isolane.tracking.store import Store

__all__ = ["SpoolImport", "import_spool"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SpoolImport:
    """What an import read and stored."""

    events: int = 0
    inserted: int = 0
    last_seq: int = 0
    problems: list[str] = field(default_factory=list)
    terminal: WireEvent | None = None


def import_spool(store: Store, run_id: str, path: Path, *, batch: int = 5000) -> SpoolImport:
    """Store every spool event the database lacks (blocking; idempotent)."""
    tail = SpoolTail(path, run_id)
    result = SpoolImport()
    events, problems = tail.read()
    result.problems.extend(problems)
    for i in range(0, len(events), batch):
        result.inserted += store.write_batch(events=[e.row() for e in events[i:i + batch]])
    result.events = len(events)
    if events:
        result.last_seq = events[-1].seq
        result.terminal = last_terminal(events)
    if result.problems:
        store.write_batch(diagnostics=[DiagnosticRow(run_id, 0.0, "spool_invalid", p)
                                       for p in result.problems])
    if result.inserted:
        log.info("run %s: imported %d events from its spool", run_id, result.inserted)
    return result
