"""The parent's use of a run's spool: import what the store lacks, follow a worker nobody watches.

::

    import_spool(store, run_id, path)   after a crash of either side, before a resume: every
                                        complete record, validated, stored idempotently
    SpoolFollower(path, run_id).read()  an adopted worker (its parent died): the records it
                                        completed since the last call, up to its tail

The spool format and its safe reading are :mod:`isolane.schemas.spool`; a spool is written by the
worker, which runs untrusted code, so every record goes through the same validating decoder as a
live run's (:func:`isolane.schemas.envelope.decode_lines`). The store ignores ``(run_id, seq)``
it already has, so importing twice is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from isolane.errors import StoreRefused
from isolane.schemas.envelope import WireEvent, decode_lines, event_rows
from isolane.schemas.outcome import last_terminal
from isolane.schemas.payloads import TERMINAL_EVENT_TYPES
from isolane.schemas.spool import (
    SpoolError,
    SpoolReader,
    SpoolSpan,
    find_tail,
    open_spool,
    writer_alive,
)
from isolane.tracking.rows import DiagnosticRow
from isolane.tracking.store import Store

__all__ = ["MAX_LISTED_PROBLEMS", "SpoolFollower", "SpoolImport", "import_spool", "probe_spool",
           "quarantine_spool"]

log = logging.getLogger(__name__)

#: An import lists at most this many invalid records; it counts the rest (a flooded spool would
#: otherwise cost a diagnostic row, and a decode, per line of garbage).
MAX_LISTED_PROBLEMS = 1000


@dataclass(slots=True)
class SpoolImport:
    """What an import read and stored."""

    events: int = 0
    inserted: int = 0
    last_seq: int = 0
    problems: list[str] = field(default_factory=list)
    #: Invalid records past :data:`MAX_LISTED_PROBLEMS`, counted and not listed.
    unlisted: int = 0
    terminal: WireEvent | None = None
    #: The latest ``run_started`` read (its ``pid`` and ``host`` say where a worker ran).
    started: WireEvent | None = None


def _take(result: SpoolImport, span: SpoolSpan, run_id: str) -> tuple[list[WireEvent], list[str]]:
    """Decode a span, noting its terminal and ``run_started`` events in ``result``."""
    decoded = decode_lines(span.data, run_id,
                           max_problems=max(MAX_LISTED_PROBLEMS - len(result.problems), 0))
    problems = [p.reason for p in span.problems] + [p.reason for p in decoded.problems]
    result.problems.extend(problems)
    result.unlisted += decoded.dropped
    events = decoded.events
    if events:
        result.events += len(events)
        result.last_seq = max(result.last_seq, events[-1].seq)
        if not decoded.types.isdisjoint(TERMINAL_EVENT_TYPES):
            result.terminal = last_terminal(events)
        if "run_started" in decoded.types:
            result.started = [e for e in events if e.type == "run_started"][-1]
    return events, problems


def import_spool(store: Store, run_id: str, path: Path, *, batch: int = 5000) -> SpoolImport:
    """Store every spool record the database lacks (blocking; idempotent).

    A spool that is not a regular file (a link, a FIFO a worker put in its place) is refused
    with :class:`~isolane.schemas.spool.SpoolError`; a missing one imports nothing.
    """
    result = SpoolImport()
    try:
        fd = open_spool(path)
    except FileNotFoundError:
        return result
    try:
        reader = SpoolReader(fd)
        pending: list[WireEvent] = []
        while True:
            pending.extend(_take(result, reader.read(), run_id)[0])
            if len(pending) >= batch or not reader.more:
                if pending:
                    result.inserted += _store_events(store, run_id, pending, result)
                pending = []
            if not reader.more:
                break
    finally:
        os.close(fd)
    if result.unlisted:
        result.problems.append(f"{result.unlisted} more invalid records were counted, not listed "
                               "(a broken or hostile workflow writing into its event log?)")
    if result.problems:
        now = time.time()
        store.write_batch(diagnostics=[DiagnosticRow(run_id, now, "spool_invalid", p)
                                       for p in result.problems])
    if result.inserted:
        log.info("run %s: imported %d events from its spool", run_id, result.inserted)
    return result


def _store_events(store: Store, run_id: str, events: list[WireEvent], result: SpoolImport) -> int:
    """Insert ``events``; a batch the database refuses for its content is written row by row,
    and each refused row becomes a ``store_refused`` problem (one bad record never blocks the
    rest of a run's import)."""
    try:
        return store.write_batch(events=event_rows(events))
    except StoreRefused:
        inserted = 0
        for event in events:
            try:
                inserted += store.write_batch(events=[event.row()])
            except StoreRefused as exc:
                result.problems.append(f"seq {event.seq} ({event.type}) was refused by the database: "
                                       f"{exc.reason}")
        return inserted


def probe_spool(path: Path) -> bool:
    """Whether a live worker holds the writer lock of the spool at ``path`` (blocking, cheap).

    A worker takes the lock before it runs anything, and it goes with the process: this finds a
    worker whose pid no parent recorded (the parent died while it started). A missing or
    refused spool has no writer.
    """
    try:
        fd = open_spool(path)
    except (FileNotFoundError, SpoolError):
        return False
    try:
        return writer_alive(fd)
    finally:
        os.close(fd)


def quarantine_spool(path: Path) -> Path | None:
    """Move a refused spool (a link or special file a worker put there) aside; return where.

    ``rename`` moves the directory entry itself, never what a link points to. A new attempt
    then starts a fresh spool; the store keeps every event the parent had received.
    """
    aside = path.with_name(f"{path.name}.refused-{int(time.time())}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    log.warning("spool %s was refused and moved to %s", path, aside)
    return aside


class SpoolFollower:
    """Follows the spool of a live worker that no parent watches (an adopted run).

    Each :meth:`read` returns the records completed since the previous call; :meth:`finish`,
    once the worker has exited, the rest up to its last complete record. A file has no
    readiness to wait on, so the caller calls :meth:`read` periodically.
    """

    def __init__(self, path: Path, run_id: str) -> None:
        self.run_id = run_id
        self.result = SpoolImport()
        self._fd: int | None = None
        try:
            self._fd = open_spool(path)
        except FileNotFoundError:
            self._fd = None
        except SpoolError as exc:
            self.result.problems.append(str(exc))
        self._reader = SpoolReader(self._fd) if self._fd is not None else None

    def writer_alive(self) -> bool:
        """Whether a live process holds the spool's writer lock (a worker that can still write)."""
        return self._fd is not None and writer_alive(self._fd)

    def read(self) -> tuple[list[WireEvent], list[str]]:
        """Records completed since the last call (the worker is still running), and problems."""
        if self._reader is None or self._fd is None:
            return [], []
        return self._drain(find_tail(self._fd)[0])

    def finish(self) -> tuple[list[WireEvent], list[str]]:
        """Everything left once the worker has exited; a torn last record is a problem."""
        if self._reader is None:
            return [], []
        try:
            return self._drain(None)
        finally:
            self.close()

    def _drain(self, upto: int | None) -> tuple[list[WireEvent], list[str]]:
        reader = self._reader
        assert reader is not None
        events: list[WireEvent] = []
        problems: list[str] = []
        while True:
            more_events, more_problems = _take(self.result, reader.read(upto), self.run_id)
            events.extend(more_events)
            problems.extend(more_problems)
            if not reader.more:
                return events, problems

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
