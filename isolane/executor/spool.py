"""Importing a run's spool into the store: the rows the database lacks, after a crash of either side.

The spool (:mod:`isolane.schemas.spool`) holds at least what the parent received; the store
ignores ``(run_id, seq)`` it has, so importing twice is harmless.
"""

from __future__ import annotations

import logging
from pathlib import Path

from isolane.schemas.spool import SpoolTail
from isolane.tracking.rows import DiagnosticRow
from isolane.tracking.store import Store

__all__ = ["import_spool"]

log = logging.getLogger(__name__)


def import_spool(store: Store, run_id: str, path: Path, *, batch: int = 5000) -> int:
    """Store every spool event the database lacks (blocking; idempotent); return how many."""
    events, problems = SpoolTail(path, run_id).read()
    inserted = 0
    for i in range(0, len(events), batch):
        inserted += store.write_batch(events=[e.row() for e in events[i:i + batch]])
    if problems:
        store.write_batch(diagnostics=[DiagnosticRow(run_id, 0.0, "spool_invalid", p)
                                       for p in problems])
    if inserted:
        log.info("run %s: imported %d events from its spool", run_id, inserted)
    return inserted
