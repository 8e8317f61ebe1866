"""The spool: a run's own record of every event, ``<run dir>/events.jsonl``, and how to read it.

::

    worker (isolane.worker.emitter)                           readers (parent, relay, recovery)
    ─────────────────────────────────                         ─────────────────────────────────
    emit() ── encode one envelope ──▶ copy into the mapped    SpoolReader.read(upto=doorbell)
              file (MAP_SHARED) ─▶ then store b"\\n"            pread [offset, upto): the complete
              (the record is published) ─▶ doorbell:            lines, never a byte past the last
              the tail offset on the event pipe                 b"\\n"; untrusted: no links, regular
                                                                file only, bounded spans
    ┌────────────┬────────────┬─────┬──────────────┬──────────────────────────────┐
    │ {"v":1,…}\\n │ {"v":1,…}\\n │  …  │ {"v":1,"se  │ \\0 \\0 \\0 … (allocated ahead) │
    └────────────┴────────────┴─────┴──────────────┴──────────────────────────────┘
                                    last complete ▲  torn (its \\n never written)

**Records.** One event envelope per line, as JSON (see :mod:`isolane.schemas.envelope`). JSON
text holds no raw newline and no NUL byte (both are escaped inside strings), so a ``b"\\n"`` can
only end a record. The writer stores a record's bytes first (in any order) and its ``b"\\n"``
after them: a record whose newline is in the file is complete, and a process killed at any
instant leaves at most one torn record, after the last newline. Readers never take bytes past
the last newline: a torn record is reported and dropped, never half-stored; a live reader that a
lying doorbell led past the tail leaves a record with NUL holes where it is until it is whole.

**Space.** The writer grows the file ahead of itself in :data:`GROWTH_BYTES` steps (allocated,
so a full disk fails at growth with an error, not with SIGBUS in the middle of a copy), which
reads as NUL bytes until written. A clean close truncates the file to its last record: a
finished spool is plain JSON Lines. The data of a spool whose writer died ends where the zeros
allocated ahead begin (:func:`find_tail`); a NUL byte before that is part of an invalid line.

**One writer.** A writer holds an exclusive OFD lock on the file (``fcntl``) for as long as the
file is open in its process (children it forked without exec included): a second writer refuses
to start, and :func:`writer_alive` tells, without taking the lock, whether a live process still
writes the spool.

**Attempts.** A resumed run appends to the same spool after the last complete record (the
writer clears a torn remnant first); ``seq`` continues, so the file stays in ``seq`` order.
Spools written before this format (one JSON *array* of envelopes per line) are still read.

A spool is written by the worker, which runs untrusted code. Every reader opens it with
:func:`open_spool` (no symbolic link followed, a regular file only, never blocking on a FIFO),
reads bounded spans with ``pread`` (a file truncated under the reader reads short; a mapping
would raise SIGBUS), and hands the lines to the validating decoder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from isolane.errors import InvalidEvent, IsolaneError

__all__ = [
    "DOORBELL",
    "GROWTH_BYTES",
    "MAX_RECORD_BYTES",
    "SPOOL_NAME",
    "DoorbellReader",
    "LineSplitter",
    "SpoolError",
    "SpoolReader",
    "SpoolSpan",
    "find_tail",
    "lock_writer",
    "open_spool",
    "read_raw",
    "spool_path",
    "writer_alive",
]

#: The spool's file name, beside the run's working directory.
SPOOL_NAME: Final = "events.jsonl"

#: A doorbell on the event pipe: the writer's tail offset (8 bytes, little-endian). Writes of
#: this size to a pipe are atomic; the reader only ever uses it as a hint of where to read to.
DOORBELL: Final = struct.Struct("<Q")

#: The largest record; a longer line is skipped with a problem (the encoder never writes one).
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024

#: How far ahead of its tail a writer allocates the file (and the span it maps).
GROWTH_BYTES: Final = 8 * 1024 * 1024

#: One ``read`` takes at most this many bytes (a bound on a reader's memory per call). A span
#: becomes one write item of the parent, a few of which may be queued for the store: at 4 MiB the
#: parent grew by ~105 MB while streaming a million events, at 1 MiB by ~34 MB, at the same rate.
_SPAN_BYTES: Final = 1024 * 1024
_NL: Final = b"\n"
_NUL: Final = b"\0"
#: Probe size when looking backwards for the end of the data.
_BACK_CHUNK: Final = 1 << 20


class SpoolError(IsolaneError):
    """A spool cannot be used: not a regular file, a link, locked by a live writer, unreadable."""


def spool_path(work_dir: str | os.PathLike[str]) -> Path:
    """The spool of the run whose working directory is ``work_dir`` (its sibling)."""
    return Path(work_dir).parent / SPOOL_NAME


def open_spool(path: str | os.PathLike[str], *, write: bool = False, create: bool = False) -> int:
    """Open a spool without trusting what is at ``path``; returns the fd (close it yourself).

    Refuses a symbolic link (``O_NOFOLLOW``), anything but a regular file, and never blocks on a
    FIFO put in the spool's place (``O_NONBLOCK`` at open, cleared after the check).
    """
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if create:
        flags |= os.O_CREAT
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolError(f"the spool {path} is a symbolic link; a worker replaced its own event "
                             "log (refused: links are never followed)") from exc
        if exc.errno == errno.ENOENT:
            raise
        raise SpoolError(f"cannot open the spool {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SpoolError(f"the spool {path} is not a regular file (a worker replaced its own "
                             "event log with a device, FIFO or directory?); refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- the one-writer lock ---------------------------------------------------------------------------

_FLOCK: Final = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux


def _lock_request(kind: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0)


def lock_writer(fd: int) -> None:
    """Take the spool's writer lock on ``fd`` (held until every copy of the fd is closed).

    Raises :class:`SpoolError` when another live process holds it.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _lock_request(fcntl.F_WRLCK))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise SpoolError("another live worker of this run holds its spool; two workers never "
                             "write one spool (wait for it to end, or cancel it)") from exc
        raise SpoolError(f"cannot lock the spool: {exc.strerror}") from exc


def writer_alive(fd: int) -> bool:
    """Whether a live process holds the writer lock of the spool open on ``fd`` (not taken)."""
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _lock_request(fcntl.F_WRLCK))
    except OSError:
        return False
    kind = _FLOCK.unpack(answer)[0]
    return bool(kind != fcntl.F_UNLCK)


# -- finding the end -------------------------------------------------------------------------------


def find_tail(fd: int) -> tuple[int, int]:
    """``(complete, data_end)``: the offset just after the last complete record, and the offset
    of the end of the data (where the zeros allocated ahead start, or the end of the file).

    Bytes in ``[complete, data_end)`` are a torn record. Reads at most a few chunks from the end
    beyond the allocated zeros (the writer allocates at most :data:`GROWTH_BYTES` ahead).
    """
    size = os.fstat(fd).st_size
    end = size
    # Skip the zeros allocated ahead, from the end backwards.
    while end > 0:
        start = max(0, end - _BACK_CHUNK)
        chunk = os.pread(fd, end - start, start)
        stripped = chunk.rstrip(_NUL)
        if stripped:
            end = start + len(stripped)
            break
        end = start
    complete = end
    while complete > 0:
        start = max(0, complete - _BACK_CHUNK)
        chunk = os.pread(fd, complete - start, start)
        at = chunk.rfind(_NL)
        if at >= 0:
            complete = start + at + 1
            break
        complete = start
    return complete, end


# -- reading ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class SpoolSpan:
    """Complete records taken in one step: ``data`` is whole lines, each ending in ``b"\\n"``
    (possibly empty); ``problems`` says what was skipped and why."""

    data: bytes = b""
    problems: list[InvalidEvent] = field(default_factory=list)


class LineSplitter:
    """Cuts a stream of spool bytes into complete records, holding at most one partial record.

    ``feed(chunk)`` returns the lines the chunk completes; ``finish()`` reports what is left (a
    torn last record: its writer died while writing it). A line longer than ``max_record`` is
    skipped up to its newline, with a problem, so a hostile writer costs the reader a bounded
    buffer, not its memory.
    """

    def __init__(self, *, max_record: int = MAX_RECORD_BYTES) -> None:
        self._max_record = max_record
        self._partial = b""
        self._skipping = False
        #: Bytes taken so far (the offset in the spool, counted from where reading began).
        self.position = 0

    def feed(self, chunk: bytes) -> SpoolSpan:
        span = SpoolSpan()
        start = self.position
        self.position += len(chunk)
        if self._skipping:
            at = chunk.find(_NL)
            if at < 0:
                return span
            chunk = chunk[at + 1:]
            self._skipping = False
        last = chunk.rfind(_NL)
        if last < 0:
            self._partial += chunk
        else:
            span.data = self._partial + chunk[:last + 1] if self._partial else chunk[:last + 1]
            self._partial = chunk[last + 1:]
        if len(self._partial) > self._max_record:
            span.problems.append(InvalidEvent(
                f"a spool record at byte {start} or later is longer than {self._max_record} "
                "bytes; skipped", excerpt=self._partial[:200]))
            self._partial = b""
            self._skipping = True
        return span

    def finish(self) -> list[InvalidEvent]:
        """The end of the stream: a partial record left over is torn; report and drop it."""
        rest, self._partial = self._partial, b""
        self._skipping = False
        if not rest:
            return []
        return [InvalidEvent(f"the spool ends inside a record: {len(rest)} bytes after the last "
                             "complete record were dropped (its writer died while writing it)",
                             excerpt=rest[:200])]


class SpoolReader:
    """Reads a spool's complete records in order, a bounded span at a time, with ``pread``.

    ``read(upto)`` returns the complete lines in ``[offset, upto)`` (a writer's doorbell says
    where its tail is); ``read()`` without ``upto`` reads on to the end of the data (the writer
    has ended): a span that ends in NUL bytes ends it (a record never contains one, so they are
    space allocated ahead; a gap of a whole span of NULs inside the data, which only a hostile
    writer makes, ends it too), and there a torn last record is reported. A call reads at most
    ``max_span`` bytes: call again while :attr:`more` is true.
    """

    def __init__(self, fd: int, *, offset: int = 0, max_span: int = _SPAN_BYTES,
                 max_record: int = MAX_RECORD_BYTES) -> None:
        self.fd = fd
        #: The next byte to read.
        self.offset = offset
        self._max_span = max_span
        self._lines = LineSplitter(max_record=max_record)
        self._end: int | None = None  # the end of the data, once the writer has ended
        #: The last call stopped at its byte bound: call again at once, more is there.
        self.more = False

    def read(self, upto: int | None = None) -> SpoolSpan:
        final = upto is None
        if upto is None:
            # The writer has ended: read on to the end of its data, where the zeros it allocated
            # ahead begin. Reading forward finds it in a span or two; find_tail would read all
            # the zeros (up to GROWTH_BYTES, ~14 ms) before a crash could be reported.
            if self._end is None:
                self._end = os.fstat(self.fd).st_size
            upto = self._end
        chunk = read_raw(self.fd, self.offset, min(upto - self.offset, self._max_span), live=True)
        bounded = len(chunk) == self._max_span
        if not final and _NUL in chunk[chunk.rfind(_NL) + 1:]:
            # Past the last newline, a record with NUL bytes inside is still being written (its
            # bytes are not stored in order): read it again when it is complete, never half.
            chunk, bounded = chunk[:chunk.rfind(_NL) + 1], False
        self.offset += len(chunk)
        span = self._lines.feed(chunk)
        self.more = bounded and self.offset < upto
        if final and not self.more:
            span.problems.extend(self._lines.finish())
        return span


def read_raw(fd: int, offset: int, size: int, *, live: bool) -> bytes:
    """Up to ``size`` bytes of a spool at ``offset`` (fewer at its end).

    ``live`` (its writer runs): trailing NUL bytes are left out. A record never ends in one, so
    they are space not written yet, where a doorbell ahead of the data (a lying writer) would
    lead a reader: what is written there later is read then, not skipped.
    """
    if size <= 0:
        return b""
    chunk = os.pread(fd, size, offset)
    if live and chunk.endswith(_NUL):
        return chunk.rstrip(_NUL)
    return chunk


class DoorbellReader:
    """Reads a writer's doorbells (its tail offsets) from the non-blocking event pipe ``fd``.

    :meth:`read` drains what is waiting and returns the highest tail announced so far; a
    misaligned or lying writer only misleads the reading of its own spool, which validates
    every record anyway.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.tail = 0
        self.eof = False
        self._rest = b""

    def read(self) -> int:
        while not self.eof:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            data = self._rest + chunk
            usable = len(data) - len(data) % DOORBELL.size
            self._rest = data[usable:]
            if usable:
                (tail,) = DOORBELL.unpack_from(data, usable - DOORBELL.size)
                self.tail = max(self.tail, tail)
        return self.tail
