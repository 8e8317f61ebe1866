"""The worker's event emitter: a bounded buffer, a flusher thread, the spool and the event pipe.

::

    workflow thread(s)                 flusher thread                         parent
    ──────────────────                 ──────────────                         ──────
    emit(type, data) ──append──▶ [ buffer (bounded) ] ──swap every T ms or N events──┐
         ▲                                                                           │
         └── blocks while the buffer is full (back-pressure)      encode_batch() once│
                                                       ┌─────────────────────────────┘
                                                       ├─▶ os.write(spool)   frame + newline
                                                       └─▶ os.write(pipe)    4-byte length + frame

``emit()`` does the least work possible on the caller's thread: it takes a lock, assigns the next
``seq`` and appends a tuple. Encoding happens once per batch on the flusher thread, so no encoded
bytes pile up per event. The spool is written before the frame is sent, so the spool always holds
at least what the parent received; that is what crash recovery relies on.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from isolane.schemas.envelope import MAX_FRAME_BYTES, BufferedEvent, encode_batch
from isolane.schemas.framing import FRAME_HEADER

__all__ = ["Emitter", "EmitterClosed"]

log = logging.getLogger(__name__)

#: A single event larger than this is replaced by an ``error`` event that says so.
_MAX_EVENT_BYTES: Final = MAX_FRAME_BYTES // 2


class EmitterClosed(RuntimeError):
    """``emit()`` was called after the emitter was closed."""


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Emitter:
    """Buffer events and ship them in batches to the spool and the parent.

    Thread-safe: any thread may call :meth:`emit`. Events keep the order in which ``emit`` assigned
    their ``seq``. ``data`` dicts are encoded at flush time: do not mutate one after emitting it.
    """

    def __init__(
        self,
        run_id: str,
        *,
        pipe_fd: int | None,
        spool_path: str | os.PathLike[str] | None,
        start_seq: int = 0,
        flush_interval: float = 0.005,
        flush_events: int = 2000,
        max_buffer_events: int = 50_000,
        heartbeat_interval: float = 5.0,
        redact: Callable[[bytes], bytes] | None = None,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if not 0 < flush_events <= max_buffer_events:
            raise ValueError("flush_events must be positive and at most max_buffer_events")
        self.run_id = run_id
        self._pipe_fd = pipe_fd
        self._spool_fd = (
            os.open(spool_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if spool_path is not None else None
        )
        self._seq = start_seq
        self._buf: list[BufferedEvent] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._flush_interval = flush_interval
        self._flush_events = flush_events
        self._max_buffer = max_buffer_events
        self._heartbeat_interval = heartbeat_interval
        self._redact = redact  # applied to each encoded frame: the spool and the pipe get the same
        self._closed = False
        self._pipe_broken = False
        self._last_send = time.monotonic()
        self._last_batch = float("-inf")  # when the flusher last sent a batch of events
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="isolane-flusher", daemon=True)
        self._thread.start()

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the most recently emitted event."""
        return self._seq

    def emit(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> int:
        """Queue one event and return its ``seq``; blocks while the buffer is full."""
        with self._lock:
            if self._closed:
                raise EmitterClosed(f"emitter of run {self.run_id} is closed")
            self._seq = seq = self._seq + 1
            buf = self._buf
            buf.append((seq, time.time(), type_, node_id, data))
            n = len(buf)
            if n == 1 or n >= self._flush_events:
                self._wake.notify()
            if n >= self._max_buffer:
                while len(self._buf) >= self._max_buffer and not self._closed:
                    self._drained.wait()
        return seq

    def flush(self) -> None:
        """Send everything buffered so far, on the calling thread."""
        with self._lock:
            batch, self._buf = self._buf, []
            self._drained.notify_all()
        self._send(batch)

    def close(self) -> None:
        """Flush what is left, stop the flusher and close the spool and the pipe."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
            self._drained.notify_all()
        self._thread.join()
        self.flush()
        for fd in (self._spool_fd, self._pipe_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._spool_fd = self._pipe_fd = None

    # -- flusher -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._buf and not self._closed:
                    # Idle: sleep until the first event arrives or a heartbeat is due.
                    self._wake.wait(max(0.0, self._last_send + self._heartbeat_interval - time.monotonic()))
                if self._buf and len(self._buf) < self._flush_events and not self._closed \
                        and time.monotonic() - self._last_batch < self._flush_interval:
                    # Inside a burst (a batch went out moments ago): linger briefly so the rest
                    # travels as one frame (woken early when full). An event after a quiet spell
                    # goes at once: a lone message reaches the parent without the linger.
                    self._wake.wait(self._flush_interval)
                if self._closed:
                    return
                batch, self._buf = self._buf, []
                self._drained.notify_all()
            if batch:
                self._last_batch = time.monotonic()
                self._send(batch)
            elif time.monotonic() - self._last_send >= self._heartbeat_interval:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                self.emit("heartbeat", {"rss_bytes": _rss_bytes(),
                                        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)})

    def _send(self, batch: Sequence[BufferedEvent]) -> None:
        if not batch:
            return
        step = self._flush_events  # frames stay small even when back-pressure grew the batch
        frames = (f for i in range(0, len(batch), step) for f in self._encode(batch[i:i + step]))
        with self._send_lock:
            for frame in frames:
                if self._spool_fd is not None:
                    _write_all(self._spool_fd, frame + b"\n")
                if self._pipe_fd is not None and not self._pipe_broken:
                    try:
                        _write_all(self._pipe_fd, FRAME_HEADER.pack(len(frame)) + frame)
                    except (BrokenPipeError, OSError) as exc:
                        # The parent is gone: keep running into the spool, recovery imports it.
                        self._pipe_broken = True
                        log.warning("event pipe closed (%s); events continue in the spool", exc)
            self._last_send = time.monotonic()

    def _encode(self, batch: Sequence[BufferedEvent]) -> list[bytes]:
        frame = encode_batch(self.run_id, batch)
        if self._redact is not None:
            frame = self._redact(frame)
        if len(frame) <= MAX_FRAME_BYTES:
            return [frame]
        if len(batch) > 1:
            mid = len(batch) // 2
            return self._encode(batch[:mid]) + self._encode(batch[mid:])
        seq, ts, type_, node_id, _ = batch[0]
        log.warning("event %s of type %s is %d bytes; replaced by an error event", seq, type_, len(frame))
        stub = {"message": f"{type_} event of {len(frame)} bytes exceeds the {_MAX_EVENT_BYTES}-byte"
                           " limit and was not sent", "error_type": "EventTooLarge"}
        return [encode_batch(self.run_id, [(seq, ts, "error", node_id, stub)])]
