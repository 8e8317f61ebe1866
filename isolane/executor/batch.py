"""A piece of one write of the store writer, and how it splits around rows the database refuses.

:class:`Rows` holds events, then diagnostics, then run updates, in the order they are written;
:meth:`Rows.split` halves it (runs apart first) until a refused row is alone, and
:meth:`Rows.refusal` is the ``store_refused`` diagnostic that stands for a refused piece
(see :mod:`isolane.executor.writer`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from isolane.schemas.envelope import EventRow
from isolane.tracking.rows import DiagnosticRow

__all__ = ["REFUSAL_BUDGET", "Rows"]

#: Rows of one run isolated one by one in one write; past it, that run's failing pieces are
#: refused whole.
REFUSAL_BUDGET = 32


@dataclass(slots=True)
class Rows:
    """A piece of a batch: events first, then diagnostics, then run updates (the order in which
    they are written, so a run's final status never lands before its events)."""

    events: Sequence[EventRow] = ()
    diagnostics: Sequence[DiagnosticRow] = ()
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def split(self) -> tuple[Rows, Rows] | None:
        """Two smaller pieces, in write order; ``None`` for a single row."""
        events, diagnostics, updates = self.events, self.diagnostics, self.updates
        if len(events) > 1:
            first_run = events[0][0]
            if events[-1][0] != first_run:  # runs apart first: one run's rows cost others nothing
                cut = next(i for i, row in enumerate(events) if row[0] != first_run)
            else:
                cut = len(events) // 2
            return Rows(events[:cut]), Rows(events[cut:], diagnostics, updates)
        if events and (diagnostics or updates):
            return Rows(events), Rows((), diagnostics, updates)
        if len(diagnostics) > 1:
            half = len(diagnostics) // 2
            return Rows((), diagnostics[:half]), Rows((), diagnostics[half:], updates)
        if diagnostics and updates:
            return Rows((), diagnostics), Rows((), (), updates)
        fields = [(run_id, name, value) for run_id, changes in updates.items()
                  for name, value in changes.items()]
        if len(fields) > 1:
            half = len(fields) // 2
            return Rows(updates=_updates(fields[:half])), Rows(updates=_updates(fields[half:]))
        return None

    def one_run(self) -> str | None:
        """The run whose events are all this piece holds, if that is all it holds."""
        if self.diagnostics or self.updates or not self.events:
            return None
        run_id = self.events[0][0]
        return run_id if self.events[-1][0] == run_id else None

    def refusal(self, reason: str) -> DiagnosticRow:
        """The ``store_refused`` diagnostic that stands for this refused piece: one row, or the
        events of one run that used up its budget."""
        now = time.time()
        if len(self.events) > 1:
            run_id = self.events[0][0]
            message = (f"the database refused {len(self.events)} more events of the run (seq "
                       f"{self.events[0][1]} to {self.events[-1][1]}), refused as a whole after "
                       f"{REFUSAL_BUDGET} rows of it were refused one by one in one write: "
                       f"{reason}; they are kept in the run's spool only")
            return DiagnosticRow(run_id, now, "store_refused", message)
        if self.events:
            run_id, seq, _, type_, node_id, data = self.events[0]
            message = (f"the database refused event seq {seq} ({type_}, node {node_id!r}): "
                       f"{reason}; the event is kept in the run's spool only")
            return DiagnosticRow(run_id, now, "store_refused", message, data)
        if self.diagnostics:
            refused = self.diagnostics[0]
            return DiagnosticRow(refused.run_id, now, "store_refused",
                                 f"the database refused a {refused.kind!r} diagnostic: {reason}")
        (run_id, changes), = self.updates.items()
        (name, value), = changes.items()
        return DiagnosticRow(run_id, now, "store_refused",
                             f"the database refused the run's {name!r}: {reason}; it was not "
                             "stored", repr(value))


def _updates(fields: Sequence[tuple[str, str, Any]]) -> dict[str, dict[str, Any]]:
    updates: dict[str, dict[str, Any]] = {}
    for run_id, name, value in fields:
        updates.setdefault(run_id, {})[name] = value
    return updates
