"""The spool, ``<run dir>/events.jsonl``: the worker's own record of every event, and its reading.

::

    worker Emitter ── frame + b"\\n" (one JSON array of envelopes per line, one line per flush)
        ▶ events.jsonl  (appended before the frame goes to the pipe: the spool holds at least
                         what the parent received)
    readers: SpoolTail (a growing spool, decoded as pipe frames are)       parent: import, adopt
             read_spool / spool_offset_after (by byte position)            a Ray relay replaying it
             split_complete / spool_lines (complete lines; a torn tail waits) every reader above

The spool is written by the worker, which runs untrusted code: each line goes through the same
validating decoder as the pipe, a line over the frame limit is refused, and a torn last line
(the worker died mid-write) is never taken as a record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import orjson

from isolane.errors import InvalidEvent
from isolane.schemas.envelope import MAX_FRAME_BYTES, WireEvent, decode_frame

__all__ = ["SpoolTail", "read_spool", "split_complete", "spool_lines", "spool_offset_after",
           "spool_path"]


def spool_path(work_dir: str | os.PathLike[str]) -> Path:
    """The spool of the run whose working directory is ``work_dir`` (its sibling)."""
    return Path(work_dir).parent / "events.jsonl"


def split_complete(data: bytes) -> tuple[bytes, bytes]:
    """``data`` cut after its last newline: ``(complete lines, torn rest)``.

    The rest is a line still being written (or torn by a crash): it waits for more bytes.
    """
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]


def spool_lines(block: bytes, *, max_line: int = MAX_FRAME_BYTES) -> tuple[list[bytes], list[InvalidEvent]]:
    """The non-empty lines of ``block`` (complete lines) and one problem per line over ``max_line``."""
    lines: list[bytes] = []
    problems: list[InvalidEvent] = []
    for line in block.split(b"\n"):
        if not line.strip():
            continue
        if len(line) > max_line:
            problems.append(InvalidEvent(
                f"a spool line of {len(line)} bytes exceeds the {max_line}-byte frame limit",
                excerpt=line[:200]))
        else:
            lines.append(line)
    return lines, problems


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
        complete, self._partial = split_complete(self._partial + chunk)
        if len(self._partial) > MAX_FRAME_BYTES + 1024:
            self._partial = b""
            return [], [f"spool line over {MAX_FRAME_BYTES} bytes skipped"]
        lines, invalid = spool_lines(complete)
        events: list[WireEvent] = []
        problems = [p.reason for p in invalid]
        for line in lines:
            decoded = decode_frame(line, self.run_id)
            problems.extend(p.reason for p in decoded.problems)
            for event in decoded.events:
                if event.seq > self.after_seq:
                    events.append(event)
                    self.after_seq = event.seq
        return events, problems


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
