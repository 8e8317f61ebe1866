"""The parent's end of a worker's event pipe: non-blocking reads, length-prefixed frames.

Frames are ``FRAME_HEADER`` (4-byte big-endian length) followed by that many bytes. The parent only
ever reads bytes here; decoding and validation happen in :func:`isolane.schemas.decode_frame`.
A declared length above the limit is refused: the reader records the problem and skips exactly
that many bytes, so one bad frame costs the sender its frame, not the parent its memory. One call
hands out at most ``max_frames`` frames (a flood of tiny frames cannot hold the event loop); the
rest wait in the buffer, announced by :attr:`FrameReader.backlog`.

The reader asks the kernel for a pipe of :data:`PIPE_CAPACITY` bytes (Linux; best effort): with the
default 64 KiB a worker's frame (2000 events, ~300 KB) does not fit, so the worker blocked on every
write until the parent had read, and the two ran in lock-step instead of side by side.

A reader without an fd (``FrameReader(None)``) is fed bytes that arrived another way (a remote
backend relays the pipe's raw bytes) through :meth:`FrameReader.feed`; the splitting and the
limits are the same.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from typing import Final

from isolane.errors import InvalidEvent
from isolane.schemas.envelope import MAX_FRAME_BYTES
from isolane.schemas.framing import FRAME_HEADER

__all__ = ["PIPE_CAPACITY", "FrameReader", "ReadResult"]

#: Requested size of the event pipe's kernel buffer (Linux caps it at /proc/sys/fs/pipe-max-size).
PIPE_CAPACITY: Final = 1 << 20
_READ_CHUNK: Final = 1 << 20
_MAX_FRAMES_PER_READ: Final = 4096


@dataclass(slots=True)
class ReadResult:
    frames: list[bytes] = field(default_factory=list)
    problems: list[InvalidEvent] = field(default_factory=list)
    eof: bool = False


class FrameReader:
    """Incrementally split the bytes of a non-blocking fd into frames.

    Memory is bounded by one maximal frame plus one read chunk.
    """

    def __init__(self, fd: int | None, *, max_frame: int = MAX_FRAME_BYTES) -> None:
        if fd is not None:
            os.set_blocking(fd, False)
            _grow_pipe(fd)
        self.fd = fd
        self._max_frame = max_frame
        self._buf = bytearray()
        self._skip = 0
        self._eof = False

    @property
    def backlog(self) -> bool:
        """Complete frames wait in the buffer: call :meth:`read_available` again without waiting."""
        buf = self._buf
        header = FRAME_HEADER.size
        if self._skip or len(buf) < header:
            return False
        length: int = FRAME_HEADER.unpack_from(buf, 0)[0]
        return length > self._max_frame or len(buf) >= header + length

    def read_available(self, *, max_bytes: int = _READ_CHUNK,
                       max_frames: int = _MAX_FRAMES_PER_READ) -> ReadResult:
        """Read what the pipe holds now (up to ``max_bytes``) and return the complete frames
        (at most ``max_frames`` of them, problems included)."""
        result = ReadResult()
        total = 0
        fd = self.fd
        if fd is None:
            raise ValueError("this FrameReader has no fd: hand it bytes with feed()")
        self._feed(b"", result, max_frames)  # what the previous call left in the buffer
        while (total < max_bytes and not self._eof
               and len(result.frames) + len(result.problems) < max_frames):
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                result.problems.append(InvalidEvent(f"event pipe read failed: {exc}"))
                result.eof = True
                break
            if not chunk:
                self._eof = True
                break
            total += len(chunk)
            self._feed(chunk, result, max_frames)
        if self._eof and not self.backlog:
            result.eof = True
        self._partial_at_eof(result)
        return result

    def feed(self, chunk: bytes, *, eof: bool = False) -> ReadResult:
        """Split ``chunk`` (bytes of the stream, in order) into every frame it completes.

        ``eof`` says the stream ends after it: a partial frame left over is reported, dropped.
        """
        result = ReadResult()
        self._feed(chunk, result, 1 << 62)
        if eof:
            self._eof = result.eof = True
        self._partial_at_eof(result)
        return result

    def _partial_at_eof(self, result: ReadResult) -> None:
        if result.eof and (self._buf or self._skip):
            result.problems.append(InvalidEvent(
                f"event pipe closed inside a frame ({len(self._buf)} bytes of a partial frame dropped)",
                excerpt=bytes(self._buf[:200])))
            self._buf.clear()
            self._skip = 0

    def _feed(self, chunk: bytes, result: ReadResult, max_frames: int) -> None:
        if self._skip:
            taken = min(self._skip, len(chunk))
            self._skip -= taken
            chunk = chunk[taken:]
        self._buf += chunk
        buf = self._buf
        pos = 0
        header = FRAME_HEADER.size
        while len(buf) - pos >= header and len(result.frames) + len(result.problems) < max_frames:
            (length,) = FRAME_HEADER.unpack_from(buf, pos)
            if length > self._max_frame:
                result.problems.append(InvalidEvent(
                    f"frame declares {length} bytes, over the {self._max_frame}-byte limit; skipped",
                    excerpt=bytes(buf[pos + header:pos + header + 200])))
                available = len(buf) - pos - header
                skipped = min(length, available)
                pos += header + skipped
                self._skip = length - skipped
                if self._skip:
                    break
                continue
            end = pos + header + length
            if end > len(buf):
                break
            with memoryview(buf) as view:  # one copy per frame (a bytearray slice would be two)
                result.frames.append(bytes(view[pos + header:end]))
            pos = end
        if pos:
            del buf[:pos]

    def close(self) -> None:
        if self.fd is None:
            return
        try:
            os.close(self.fd)
        except OSError:
            pass


def _grow_pipe(fd: int) -> None:
    """Ask for a :data:`PIPE_CAPACITY`-byte pipe buffer; keep the default where that is refused."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is None:
        return
    try:
        fcntl.fcntl(fd, set_size, PIPE_CAPACITY)
    except OSError:  # not a pipe, or over the unprivileged limit: the default still works
        pass
