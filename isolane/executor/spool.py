"""Reading a run's spool, ``<run dir>/events.jsonl``: the worker's own record of every event.

The worker appends each frame (a JSON array of envelopes) as one line before it sends the frame
to the parent, so the spool holds at least what the parent received. After a crash of either
side the spool rows the store lacks are imported; the store ignores ``(run_id, seq)`` it has,
so importing twice is harmless. The spool is written by the worker, which runs untrusted code:
each line goes through the same validating decoder as the pipe, and a torn last line (the worker
died mid-write) is skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from isolane.schemas.envelope import MAX_FRAME_BYTES, WireEvent, decode_frame
from isolane.tracking.store import Store

__all__ = ["SpoolImport", "SpoolTail", "import_spool", "read_spool", "spool_offset_after", "spool_path"]

log = logging.getLogger(__name__)

EventRow = tuple[str, int, float, str, str | None, str]


def spool_path(work_dir: str | os.PathLike[str]) -> Path:
    """The spool of the run whose working directory is ``work_dir`` (its sibling)."""
    return Path(work_dir).parent / "events.jsonl"


@dataclass(slots=True)
class SpoolImport:
    """What an import read and stored."""

    events: int = 0
    inserted: int = 0
    last_seq: int = 0
    problems: list[str] = field(default_factory=list)
    terminal: WireEvent | None = None


def _rows(events: list[WireEvent]) -> list[EventRow]:
    return [(e.run_id, e.seq, e.ts, e.type, e.node_id, bytes(e.data).decode()) for e in events]


class SpoolTail:
    """Incremental reader of a growing spool: each :meth:`read` returns the new complete lines."""

    def __init__(self, path: Path, run_id: str, *, after_seq: int = 0) -> None:
        self.path = path
        self.run_id = run_id
        self.after_seq = after_seq
        self._offset = 0
        self._partial = b""

    def read(self) -> tuple[list[WireEvent], list[str]]:
        """New events (``seq > after_seq``, in order) and problems since the last call."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return [], []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next read
        if len(self._partial) > MAX_FRAME_BYTES + 1024:
            self._partial = b""
            return [], [f"spool line over {MAX_FRAME_BYTES} bytes skipped"]
        events: list[WireEvent] = []
        problems: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            decoded = decode_frame(line, self.run_id)
            problems.extend(p.reason for p in decoded.problems)
            for event in decoded.events:
                if event.seq > self.after_seq:
                    events.append(event)
                    self.after_seq = event.seq
        return events, problems

    def iter_all(self) -> Iterator[WireEvent]:
        events, _ = self.read()
        yield from events


def import_spool(store: Store, run_id: str, path: Path, *, batch: int = 5000) -> SpoolImport:
    """Store every spool event the database lacks (blocking; idempotent)."""
    tail = SpoolTail(path, run_id)
    result = SpoolImport()
    events, problems = tail.read()
    result.problems.extend(problems)
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        result.inserted += store.write_batch(events=_rows(chunk))
    result.events = len(events)
    if events:
        result.last_seq = events[-1].seq
        terminal = [e for e in events if e.type in ("run_completed", "run_failed", "run_cancelled")]
        result.terminal = terminal[-1] if terminal else None
    if result.problems:
        store.write_batch(diagnostics=[(run_id, 0.0, "spool_invalid", p, "") for p in result.problems])
    if result.inserted:
        log.info("run %s: imported %d events from its spool", run_id, result.inserted)
    return result


# -- reading a spool by position (a Ray relay replaying it to a re-attached parent) -----------


def read_spool(path: Path, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of the spool from ``offset`` (nothing when it does not exist yet)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(limit)
    except FileNotFoundError:
        return b""


def spool_offset_after(path: Path, start: int, since_seq: int) -> int:
    """The byte offset, at or after ``start``, of the first spool line whose last event comes
    after ``since_seq`` (the end of the complete lines if none does).

    A binary search over byte positions: each probe reads the first complete line after it and
    parses that line alone, so a re-attach costs O(log size) parses, not a scan of the spool.
    A line that does not parse counts as "after" (it is sent; the parent diagnoses it).
    """
    if since_seq <= 0:
        return start
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; many seeks on one handle
    except FileNotFoundError:
        return start
    with fh:
        lo = start  # a line start: every line before it is at or before since_seq
        hi = fh.seek(0, os.SEEK_END)  # a line start (or the end) at or after the answer
        while lo < hi:
            at = _next_line_start(fh, (lo + hi) // 2, start)
            if at >= hi:  # no line starts in the upper half: look at the line at lo itself
                at = lo
            fh.seek(at)
            line = fh.readline()
            if not line.endswith(b"\n") or _line_last_seq(line) > since_seq:
                hi = at  # a torn last line, or a new one: the answer is here or before
            else:
                lo = at + len(line)  # old, and so is every line before it
        return lo


def _next_line_start(fh: BinaryIO, pos: int, start: int) -> int:
    """The first line start at or after ``pos`` (``start`` is one; others follow a newline)."""
    if pos <= start:
        return start
    fh.seek(pos - 1)
    while True:
        chunk = fh.read(65536)
        if not chunk:
            return fh.tell()
        at = chunk.find(b"\n")
        if at >= 0:
            return fh.tell() - len(chunk) + at + 1


def _line_last_seq(line: bytes) -> int:
    try:
        last = orjson.loads(line)[-1]["seq"]
    except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
        return 1 << 62
    return last if isinstance(last, int) else 1 << 62
