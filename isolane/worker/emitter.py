"""The worker's event emitter: every event is in the spool before ``emit()`` returns.

::

    workflow thread(s)                                   bell thread                 parent
    ──────────────────                                   ───────────                 ──────
    emit(type, data) ─ encode data ─ Journal.commit() ─┐
                     (user code may   screen · seq ·   ├─▶ the record in the spool's shared
                      run here)       compose          │   mapping, then b"\\n" (published)
                                                       └─▶ first event since the last doorbell:
                                                           wake the bell thread ──▶ (linger
                                                             inside a burst) ──▶ os.write(pipe,
                                                             tail) ──▶ reads the spool up to it
    idle for heartbeat_interval ──▶ the bell thread emits a ``heartbeat`` event

``emit()`` encodes its event's data on the caller's thread, then the run's journal
(:mod:`isolane.worker.journal`) gives it its ``seq`` and composes its record straight into the
spool, mapped ``MAP_SHARED`` (see :mod:`isolane.worker.spool_writer`): once ``emit()`` returns,
the event survives a SIGKILL of the worker the next instant, with no system call on the way. The
event pipe carries only doorbells, the spool's tail offset, so that the parent need not poll; it
reads the records from the spool itself. A burst rings one doorbell per ``linger`` seconds; an
event after a quiet spell rings at once.

Secrets never reach the spool: the journal screens each event and sends back one that may hold a
secret, which the emitter redacts (:class:`~isolane.schemas.redaction.Redactor`) before it
commits it. Events keep the order in which they got their ``seq``, whatever thread emits them,
and an event emitted while another's data is encoded (from a ``__repr__``) simply comes first.
The spool is bounded (``SpoolWriter(max_bytes=)``): past it the run is stopped through
``on_full`` and a reserve remains for its last events.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol

import orjson

from isolane.schemas.envelope import MAX_FRAME_BYTES, encode_data, record_prefix
from isolane.schemas.redaction import Redactor
from isolane.schemas.spool import DOORBELL, SpoolError
from isolane.worker.journal import CLOSED, NO_ROOM, REDACT, TOO_LARGE, UNSUPPORTED, Journal
from isolane.worker.spool_writer import SpoolWriter

__all__ = ["Emit", "Emitter", "EmitterClosed"]

log = logging.getLogger(__name__)

_dumps: Final = orjson.dumps

#: How many times emit() deals with a refusal of the journal before it gives up (see
#: ``_commit_after``: a redaction, a window, a replacement, plain names, and room again).
_MAX_RETRIES: Final = 8
#: What ``commit`` answers in a process forked from the worker (see ``Emitter._after_fork``).
_FORKED: Final = -100
#: A single event larger than this is replaced by an ``error`` event that says so.
MAX_EVENT_BYTES: Final = MAX_FRAME_BYTES // 2


def _plain(text: object, what: str = "node_id") -> str:
    """``text`` as a str the journal can write: a lone surrogate escaped, another type's str()."""
    if what == "type_" and not isinstance(text, str):
        raise TypeError(f"an event type must be a str, not {type(text).__name__}")
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


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
        redactor: Redactor | None = None,
        on_full: Callable[[int], None] | None = None,
    ) -> None:
        if linger < 0:
            raise ValueError("linger cannot be negative")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        self.run_id = run_id
        self._spool = spool
        self._pipe_fd = pipe_fd
        self._lock = threading.RLock()
        self._bell = threading.Condition(self._lock)
        #: Where each event is committed; it screens for secrets when there is a redactor.
        self._redactor = redactor
        self._journal = Journal(spool.cursor, record_prefix(run_id), start_seq,
                                None if redactor is None else redactor.needles, self._wake,
                                MAX_EVENT_BYTES)
        self._commit = self._journal.commit  # bound once: emit() is the hot path
        self._linger = linger
        self._heartbeat_interval = heartbeat_interval
        self._on_full = on_full
        self._full = False
        self._finished = False
        self._pipe_broken = False
        self._last_ring = float("-inf")  # when a doorbell last rang (a burst lingers after it)
        self._last_sign = time.monotonic()  # a doorbell or the start: heartbeats count from it
        self._forked = False  # this object was inherited by a process forked from the worker
        self._forked_warned = False
        self._thread = threading.Thread(target=self._run, name="isolane-bell", daemon=True)
        self._thread.start()
        os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the most recently emitted event."""
        return self._journal.seq

    @property
    def spool_tail(self) -> int:
        """The spool offset just after the last event written."""
        return self._spool.tail

    def emit(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> int:
        """Write one event to the spool and return its ``seq``; it is durable when this returns.

        In a process forked from the worker nothing is recorded: 0 is returned (and a warning
        logged once)."""
        try:
            # Encoded before the commit, outside any lock: user code that runs here (an enum's
            # value, a __repr__ below) may emit events of its own; they come first.
            body = _dumps(data)
        except TypeError:  # values JSON cannot hold: rendered with repr
            body = encode_data(data)
        seq = self._commit(type_, node_id, body)
        return seq if seq > 0 else self._commit_after(seq, type_, node_id, body)

    def _commit_after(self, code: int, type_: str, node_id: str | None, body: bytes) -> int:
        """Deal with what ``commit()`` returned instead of a seq, and commit again (each answer
        is dealt with once: redacted, given room, replaced, made plain; more means a bug)."""
        screened = False
        for _ in range(_MAX_RETRIES):
            if code == _FORKED:
                return self._from_forked_child(type_)
            if code == REDACT:
                redactor = self._redactor
                assert redactor is not None  # the journal screens only when there is one
                body = redactor.redact_json(body)
                type_ = redactor.redact_text(type_)
                node_id = None if node_id is None else redactor.redact_text(node_id)
                screened = True
            elif code == NO_ROOM:
                self._make_room(self._journal.need)
            elif code == TOO_LARGE:
                type_, body = "error", self._too_large(type_, self._journal.need)
            elif code == UNSUPPORTED:
                type_, node_id = _plain(type_, "type_"), None if node_id is None else _plain(node_id)
            elif code == CLOSED:
                raise EmitterClosed(f"emitter of run {self.run_id} is closed")
            code = self._commit(type_, node_id, body, screened)
            if code > 0:
                return code
        raise RuntimeError(f"the journal of run {self.run_id} kept refusing an event of type "
                           f"{type_!r} (last answer {code}); this is a bug in isolane")

    def _make_room(self, need: int) -> None:
        with self._lock:  # one thread maps the next window; the others find it there
            try:
                over = self._spool.make_room(need)
            except SpoolError as exc:
                raise EmitterClosed(str(exc)) from exc
            if over and not self._full:
                self._full = True
                self._report_full()

    def _too_large(self, type_: str, size: int) -> bytes:
        log.warning("an event of type %s is %d bytes; replaced by an error event", type_, size)
        return _dumps({"message": f"{type_} event of {size} bytes exceeds the {MAX_EVENT_BYTES}-byte "
                                  "limit and was not recorded", "error_type": "EventTooLarge"})

    def _report_full(self) -> None:
        log.warning("run %s: its spool passed its limit (%d bytes)", self.run_id, self._spool.tail)
        if self._on_full is not None:
            self._on_full(self._spool.tail)

    def flush(self) -> None:
        """Ring the doorbell now (a question for a person should not wait for the linger)."""
        _, tail = self._journal.take()
        self._ring(tail)

    def _from_forked_child(self, type_: str) -> int:
        if not self._forked_warned:
            self._forked_warned = True
            log.warning("process %d, forked from the worker of run %s, emitted a %s event: events "
                        "of forked processes are not recorded (only the worker writes its event "
                        "log); emit from the worker, or use threads", os.getpid(), self.run_id, type_)
        return 0

    def close(self) -> None:
        """Stop the bell thread, ring a last doorbell and close the spool and the pipe."""
        if self._forked:  # the worker's spool is not this process's to cut or close
            return
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._journal.close()
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

    def _wake(self) -> None:
        """The journal's call when it commits an event and no doorbell is due yet."""
        with self._bell:
            self._bell.notify()

    def _run(self) -> None:
        journal = self._journal
        while True:
            with self._lock:
                if not journal.rung and not journal.closed:
                    # Idle: sleep until an event arrives or a heartbeat is due.
                    self._bell.wait(max(0.0, self._last_sign + self._heartbeat_interval
                                        - time.monotonic()))
                if journal.rung and not journal.closed \
                        and time.monotonic() - self._last_ring < self._linger:
                    # Inside a burst (a doorbell rang moments ago): let the rest of it gather
                    # behind one doorbell. An event after a quiet spell rings at once.
                    self._bell.wait(self._linger)
                if journal.closed:
                    return
                rung, tail = journal.take()
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
        self._last_ring = self._last_sign = time.monotonic()
        fd = self._pipe_fd
        if fd is None or self._pipe_broken:
            return
        try:
            os.write(fd, DOORBELL.pack(tail))
        except OSError as exc:
            # The parent is gone: keep running into the spool, recovery imports it.
            self._pipe_broken = True
            log.warning("event pipe closed (%s); events continue in the spool", exc)


def _after_fork(ref: weakref.ref[Emitter]) -> None:
    """In a process forked from the worker (a ``multiprocessing`` pool, ``os.fork``): the
    inherited emitter records nothing. Its journal writes the worker's spool at the worker's own
    tail, so the two processes would overwrite each other's events; and its locks may have been
    held by a thread that does not exist here. ``emit()`` returns 0 and warns once."""
    emitter = ref()
    if emitter is not None:
        emitter._forked = True
        emitter._forked_warned = False
        emitter._commit = lambda *args: _FORKED
