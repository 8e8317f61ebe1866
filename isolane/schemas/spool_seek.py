"""Finding a place in a spool by ``seq`` without reading it through: where a re-attached Ray
relay resumes sending (:mod:`isolane.backends.ray.relay`).

::

    offset_after(fd, start, since_seq)   binary search over byte positions: each probe parses the
                                         one record after it (O(log size) parses, not a scan)

The spool format and its safe reading are :mod:`isolane.schemas.spool`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

import orjson

from isolane.schemas.spool import find_tail

__all__ = ["offset_after"]

_NL: Final = b"\n"
#: Bytes read per probe step.
_CHUNK: Final = 1 << 20


def offset_after(fd: int, start: int, since_seq: int) -> int:
    """The offset, at or after the record start ``start``, of the first record whose ``seq`` is
    after ``since_seq`` (the end of the complete records if there is none).

    A binary search over byte positions: each probe parses the one record after it, so a
    re-attach costs O(log size) parses, not a scan of the spool. A record that does not parse
    counts as "after" (it is sent; the reader diagnoses it).
    """
    if since_seq <= 0:
        return start
    lo = start  # a record start: every record before it is at or before since_seq
    hi = find_tail(fd)[0]  # a record start (or the end) at or after the answer
    while lo < hi:
        at = _next_record(fd, (lo + hi) // 2, start, hi)
        if at >= hi:  # no record starts in the upper half: look at the one at lo itself
            at = lo
        line = _record_at(fd, at, hi)
        if _last_seq(line) > since_seq:
            hi = at
        else:
            lo = at + len(line)
    return lo


def _chunks(fd: int, at: int, end: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` read from ``at`` on, up to ``end``, a chunk at a time."""
    while at < end:
        chunk = os.pread(fd, min(_CHUNK, end - at), at)
        if not chunk:
            return
        yield at, chunk
        at += len(chunk)


def _next_record(fd: int, pos: int, start: int, end: int) -> int:
    """The first record start at or after ``pos`` (``start`` is one; others follow a newline)."""
    if pos <= start:
        return start
    for at, chunk in _chunks(fd, pos - 1, end):
        nl = chunk.find(_NL)
        if nl >= 0:
            return at + nl + 1
    return end


def _record_at(fd: int, at: int, end: int) -> bytes:
    """The record starting at ``at``, its newline included (bounded by ``end``)."""
    parts: list[bytes] = []
    for _, chunk in _chunks(fd, at, end):
        nl = chunk.find(_NL)
        if nl >= 0:
            parts.append(chunk[:nl + 1])
            break
        parts.append(chunk)
    return b"".join(parts)


def _last_seq(record: bytes) -> int:
    """The ``seq`` of a record (the last one of an array line); unparsable: after everything."""
    try:
        value = orjson.loads(record)
        seq = value[-1]["seq"] if isinstance(value, list) else value["seq"]
    except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
        return 1 << 62
    return seq if isinstance(seq, int) else 1 << 62
