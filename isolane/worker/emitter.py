"""The worker's event emitter: every event is in the spool before ``emit()`` returns.

::

    workflow thread(s)                                   bell thread                 parent
    ──────────────────                                   ───────────                 ──────
    emit(type, data) ─ lock ─ seq · encode · redact ─┐
                                                     ├─▶ SpoolWriter.append(): copy into the
                                                     │   shared mapping, then b"\\n" (published)
                                                     └─▶ first event since the last doorbell:
                                                         wake the bell thread ──▶ (linger inside a
                                                                burst) ──▶ os.write(pipe, tail)
                                                                          ──▶ reads the spool up
                                                                              to the tail
    idle for heartbeat_interval ──▶ the bell thread emits a ``heartbeat`` event

``emit()`` encodes its event on the caller's thread and copies it into the run's spool, mapped
``MAP_SHARED`` (see :mod:`isolane.worker.spool_writer`): once it returns, the event survives a
SIGKILL of the worker the next instant, with no system call on the way. The event pipe carries
only doorbells, the spool's tail offset, so that the parent need not poll; it reads the records
from the spool itself. A burst rings one doorbell per ``linger`` seconds; an event after a quiet
spell rings at once.

Secrets are redacted from each encoded record before it is written, so the spool, the store and
every screen see the same redacted bytes. Events keep the order in which ``emit()`` assigned
their ``seq``, whatever thread emits them. The spool is bounded (``SpoolWriter(max_bytes=)``):
past it the run is stopped through ``on_full`` and a reserve remains for its last events.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any, Final, NoReturn, Protocol

import orjson

from isolane.schemas.envelope import MAX_FRAME_BYTES, encode_event, envelope
from isolane.schemas.spool import DOORBELL, SpoolError
from isolane.worker.spool_writer import SpoolWriter

__all__ = ["Emit", "Emitter", "EmitterClosed"]

log = logging.getLogger(__name__)

_now: Final = time.time  # bound once: emit() is the hot path
_dumps: Final = orjson.dumps

#: A single event larger than this is replaced by an ``error`` event that says so.
MAX_EVENT_BYTES: Final = MAX_FRAME_BYTES // 2


def _unchanged(record: bytes) -> bytes:
    return record


class Emit(Protocol):
    """What sends one event in the worker: ``Emitter.emit``, ``RunContext.emit_event``, the
    runtime's emit (:func:`isolane.worker.context.runtime_emit`). Returns the event's ``seq``."""

    def __call__(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> int: ...


class EmitterClosed(RuntimeError):
    """``emit()`` was called after the emitter was closed (or past the spool's reserve)."""


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Emitter:
    """Write events to the run's spool and ring the parent's doorbell.

    Thread-safe: any thread may call :meth:`emit`. ``data`` is encoded before ``emit`` returns;
    values JSON cannot hold are rendered with ``repr``. ``pipe_fd`` (the event pipe) may be
    None: the spool alone then holds the events (a test, or a relay that reads the spool).
    """

    def __init__(
        self,
        run_id: str,
        *,
        spool: SpoolWriter,
        pipe_fd: int | None,
        start_seq: int = 0,
        linger: float = 0.005,
        heartbeat_interval: float = 5.0,
        redact: Callable[[bytes], bytes] | None = None,
        on_full: Callable[[int], None] | None = None,
    ) -> None:
        if linger < 0:
            raise ValueError("linger cannot be negative")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        self.run_id = run_id
        self._spool = spool
        self._append = spool.append  # bound once: emit() is the hot path
        self._envelope = envelope(run_id, start_seq, 0.0, "", None, {})
        self._pipe_fd = pipe_fd
        self._seq = start_seq
        self._lock = threading.RLock()
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._bell = threading.Condition(self._lock)
        self._rung = False  # a doorbell is due: the bell thread has been woken for it
        self._refusing = False  # closed, or inside an encode that runs user code: emit() refuses
        self._linger = linger
        self._heartbeat_interval = heartbeat_interval
        #: Applied to each encoded record: the spool holds redacted bytes only.
        self._redact: Callable[[bytes], bytes] = _unchanged if redact is None else redact
        self._on_full = on_full
        self._full = False
        self._closed = False
        self._finished = False
        self._pipe_broken = False
        self._last_ring = float("-inf")  # when a doorbell last rang (a burst lingers after it)
        self._last_sign = time.monotonic()  # a doorbell or the start: heartbeats count from it
        self._thread = threading.Thread(target=self._run, name="isolane-bell", daemon=True)
        self._thread.start()

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the most recently emitted event."""
        return self._seq

    @property
    def spool_tail(self) -> int:
        """The spool offset just after the last event written."""
        return self._spool.tail

    def emit(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> int:
        """Write one event to the spool and return its ``seq``; it is durable when this returns."""
        self._acquire()  # not `with`: entering and leaving a with-block costs more than the calls
        try:
            if self._refusing:  # closed, or inside the encoding of another event on this thread
                self._refuse()
            self._seq = seq = self._seq + 1
            # The envelope of encode_event, its fields set in place. It keeps the caller's data
            # until the next event replaces it (a heartbeat at the latest, when idle).
            fields = self._envelope
            fields["seq"] = seq
            fields["ts"] = _now()
            fields["type"] = type_
            fields["node_id"] = node_id
            fields["data"] = data
            try:
                # Plain JSON values: orjson runs no __repr__, nothing here can re-enter emit().
                record = _dumps(fields)
            except TypeError:  # values JSON cannot hold: rendered with repr (user code)
                record = self._encode_any(seq, type_, node_id, data)
            record = self._redact(record)
            if len(record) > MAX_EVENT_BYTES:
                record = self._too_large(seq, type_, node_id, len(record))
            try:
                if self._append(record) and not self._full:  # true once past the spool's limit
                    self._full = True
                    self._report_full()
            except SpoolError as exc:
                raise EmitterClosed(str(exc)) from exc
            if not self._rung:
                self._rung = True
                self._bell.notify()
        finally:
            self._release()
        return seq

    def _refuse(self) -> NoReturn:
        if self._closed:
            raise EmitterClosed(f"emitter of run {self.run_id} is closed")
        raise RuntimeError("emit() was called while another event was being encoded on this "
                           "thread (from a __repr__ of its data?); emit it after")

    def _encode_any(self, seq: int, type_: str, node_id: str | None, data: dict[str, Any]) -> bytes:
        self._refusing = True  # a __repr__ that emits re-enters emit(): refused
        try:
            return encode_event(self.run_id, seq, _now(), type_, node_id, data)
        except BaseException:
            self._seq = seq - 1  # not emitted: the next event takes its seq (no gap)
            raise
        finally:
            self._refusing = self._closed

    def _too_large(self, seq: int, type_: str, node_id: str | None, size: int) -> bytes:
        log.warning("event %s of type %s is %d bytes; replaced by an error event", seq, type_, size)
        stub = {"message": f"{type_} event of {size} bytes exceeds the {MAX_EVENT_BYTES}-byte limit "
                           "and was not recorded", "error_type": "EventTooLarge"}
        return encode_event(self.run_id, seq, time.time(), "error", node_id, stub)

    def _report_full(self) -> None:
        log.warning("run %s: its spool passed its limit (%d bytes)", self.run_id, self._spool.tail)
        if self._on_full is not None:
            self._on_full(self._spool.tail)

    def flush(self) -> None:
        """Ring the doorbell now (a question for a person should not wait for the linger)."""
        with self._lock:
            self._rung = False
            tail = self._spool.tail
        self._ring(tail)

    def close(self) -> None:
        """Stop the bell thread, ring a last doorbell and close the spool and the pipe."""
        with self._lock:
            if self._finished:
                return
            self._finished = self._closed = self._refusing = True
            self._bell.notify_all()
        self._thread.join()
        self.flush()
        self._spool.close()
        if self._pipe_fd is not None:
            try:
                os.close(self._pipe_fd)
            except OSError:
                pass
            self._pipe_fd = None

    # -- the bell thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._rung and not self._closed:
                    # Idle: sleep until an event arrives or a heartbeat is due.
                    self._bell.wait(max(0.0, self._last_sign + self._heartbeat_interval
                                        - time.monotonic()))
                if self._rung and not self._closed \
                        and time.monotonic() - self._last_ring < self._linger:
                    # Inside a burst (a doorbell rang moments ago): let the rest of it gather
                    # behind one doorbell. An event after a quiet spell rings at once.
                    self._bell.wait(self._linger)
                if self._closed:
                    return
                rung, self._rung = self._rung, False
                tail = self._spool.tail
            if rung:
                self._ring(tail)
            elif time.monotonic() - self._last_sign >= self._heartbeat_interval:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                try:
                    self.emit("heartbeat", {"rss_bytes": _rss_bytes(),
                                            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)})
                except EmitterClosed:
                    return

    def _ring(self, tail: int) -> None:
        self._last_ring = float("-inf")  # when a doorbell last rang (a burst lingers after it)
        self._last_sign = time.monotonic()  # a doorbell or the start: heartbeats count from it
        fd = self._pipe_fd
        if fd is None or self._pipe_broken:
            return
        try:
            os.write(fd, DOORBELL.pack(tail))
        except OSError as exc:
            # The parent is gone: keep running into the spool, recovery imports it.
            self._pipe_broken = True
            log.warning("event pipe closed (%s); events continue in the spool", exc)
