"""The journal: where an event gets its ``seq``, its time and its place in the run's spool.

::

    Emitter.emit(type_, data, node_id)
      body = orjson.dumps(data)            on the caller's thread; may run user code (an enum's
                                           value, a repr): touches nothing shared
      Journal.commit(type_, node_id, body) one step, atomic: screen the pieces for secrets,
                                           seq + 1, the time, the envelope composed straight into
                                           the Cursor's window, b"\\n" stored last (published)
        → seq                              committed (and wake() called if no doorbell was due)
        → REDACT / NO_ROOM / TOO_LARGE /   nothing changed: the emitter redacts the pieces, maps the
          UNSUPPORTED / CLOSED             next window, replaces the event or refuses, then commits
                                           again

A :class:`Cursor` is the window of the spool file that records are copied into (the
:class:`~isolane.worker.spool_writer.SpoolWriter` maps it); a :class:`Journal` composes events
into a cursor. Splitting the encoding of ``data`` from the commit is what keeps ``seq`` order and
the spool's order the same with any number of threads: the only step that touches shared state
runs no user code.

Two implementations with one behaviour: ``isolane.worker._journal`` (C, built with the package
when a compiler is there) and the classes below (Python, used without it, and tested against it).
The compiled commit is one call that never releases the GIL, which is what makes it atomic
without a lock and brings ``emit()`` well under a microsecond; the Python one takes a lock.
Their records differ only in how ``ts`` is written (C: 7 decimals from ``clock_gettime``;
Python: ``time.time()`` as orjson writes a float); both decode to the same
:class:`~isolane.schemas.envelope.WireEvent`.

The screen (does a piece hold ``sk-``, ``bearer`` next to a space or an escaped tab, or a
configured secret?) is :mod:`isolane.schemas.redaction`'s; a piece it flags is redacted by the
emitter before it is committed, so no secret is written to the spool, not even past its tail.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import orjson

from isolane.schemas.redaction import may_hold_secret

__all__ = [
    "CLOSED",
    "COMPILED",
    "NO_ROOM",
    "REDACT",
    "TOO_LARGE",
    "UNSUPPORTED",
    "Cursor",
    "CursorLike",
    "Journal",
    "JournalLike",
    "Needles",
    "PyCursor",
    "PyJournal",
]

#: ``commit()`` results that are not a ``seq`` (a ``seq`` is >= 1).
REDACT: Final = 0
NO_ROOM: Final = -1
CLOSED: Final = -2
TOO_LARGE: Final = -3
UNSUPPORTED: Final = -4

_NEWLINE: Final = 10

#: The configured secrets a journal screens for: ``(as JSON writes them, as text)``.
Needles = tuple[tuple[bytes, ...], tuple[bytes, ...]]
_now: Final = time.time
_dumps: Final = orjson.dumps
_Fragment: Final = orjson.Fragment


class CursorLike(Protocol):
    """What both cursors offer (see :class:`PyCursor`)."""

    def __init__(self, tail: int = 0) -> None: ...

    @property
    def tail(self) -> int: ...
    @property
    def free(self) -> int: ...
    def map(self, window: Any, base: int) -> None: ...
    def unmap(self) -> None: ...
    def put(self, record: bytes) -> bool: ...


class JournalLike(Protocol):
    """What both journals offer (see :class:`PyJournal`); a journal takes the cursor of its own
    implementation."""

    def __init__(self, cursor: Any, prefix: bytes, seq: int, needles: Needles | None,
                 wake: Callable[[], object], max_record: int) -> None: ...

    @property
    def seq(self) -> int: ...
    @property
    def need(self) -> int: ...
    @property
    def rung(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def commit(self, type_: Any, node_id: Any, body: bytes, screened: bool = False, /) -> int: ...
    def take(self) -> tuple[bool, int]: ...
    def close(self) -> None: ...


class PyCursor:
    """The window of a spool that records are copied into, from file offset ``tail`` on.

    Its lock makes :meth:`map` wait for a copy in progress, so the old window can be closed
    after it (the compiled cursor needs none: each of its calls holds the GIL throughout).
    """

    __slots__ = ("_at", "_base", "_lock", "_window")

    def __init__(self, tail: int = 0) -> None:
        if tail < 0:
            raise ValueError("tail cannot be negative")
        self._window: Any = None
        self._base = tail
        self._at = 0
        self._lock = threading.Lock()

    @property
    def tail(self) -> int:
        """The file offset where the next record goes."""
        return self._base + self._at

    @property
    def free(self) -> int:
        """Bytes left in the window."""
        return 0 if self._window is None else len(self._window) - self._at

    def map(self, window: Any, base: int) -> None:
        """Write into ``window`` (a writable buffer at file offset ``base``) from the tail on."""
        with self._lock:
            tail = self._base + self._at
            if not 0 <= base <= tail <= base + len(window):
                raise ValueError(f"tail {tail} is outside the window [{base}, {base + len(window)})")
            self._window, self._base, self._at = window, base, tail - base

    def unmap(self) -> None:
        """Let go of the window (its mmap can then be closed); the tail is kept."""
        with self._lock:
            self._base += self._at
            self._at = 0
            self._window = None

    def put(self, record: bytes) -> bool:
        """Copy ``record`` and its newline in, or return False if the window is too small."""
        with self._lock:
            return self._put(record)

    def _put(self, record: bytes) -> bool:  # with the lock held
        window = self._window
        at = self._at
        end = at + len(record)
        if window is None or end + 1 > len(window):
            return False
        window[at:end] = record
        window[end] = _NEWLINE  # stored after the bytes: now the record is complete
        self._at = end + 1
        return True


class PyJournal:
    """Composes events into a :class:`PyCursor`, under its lock (see the module's docstring)."""

    def __init__(self, cursor: PyCursor, prefix: bytes, seq: int, needles: Needles | None,
                 wake: Callable[[], object], max_record: int) -> None:
        if seq < 0 or max_record <= 0:
            raise ValueError("seq cannot be negative and max_record must be positive")
        self._cursor = cursor
        self._lock = cursor._lock  # one lock: a commit and a new window never overlap
        #: The envelope (its constant fields read back from the prefix), set in place under
        #: the lock: orjson then writes the same JSON as the compiled journal composes.
        self._fields: dict[str, Any] = orjson.loads(prefix + b"0}")
        self._fields.update(ts=0.0, type="", node_id=None, data=None)
        # The whole record is screened, as JSON: the needles as JSON writes them.
        self._needles = None if needles is None else tuple(n.decode() for n in needles[0])
        self._wake = wake
        self._seq = seq
        self._max_record = max_record
        self._need = 0
        self._rung = False
        self._closed = False

    seq = property(lambda self: self._seq, doc="The seq of the last event committed.")
    need = property(lambda self: self._need, doc="Bytes the last NO_ROOM/TOO_LARGE record needed.")
    rung = property(lambda self: self._rung, doc="A doorbell is due (wake() was called for it).")
    closed = property(lambda self: self._closed, doc="close() was called.")

    def commit(self, type_: Any, node_id: Any, body: bytes, screened: bool = False, /) -> int:
        """Commit one event: its ``seq``, or a code that says what to do first."""
        if not isinstance(body, bytes):
            raise TypeError("body must be bytes (the event's data, encoded)")
        if not isinstance(type_, str) or not (node_id is None or isinstance(node_id, str)):
            return UNSUPPORTED
        with self._lock:
            if self._closed:
                return CLOSED
            fields = self._fields
            fields["seq"] = seq = self._seq + 1
            fields["ts"] = _now()
            fields["type"] = type_
            fields["node_id"] = node_id
            fields["data"] = _Fragment(body)
            try:
                record = _dumps(fields)
            except TypeError:  # a lone surrogate
                return UNSUPPORTED
            finally:
                fields["data"] = None
            if self._needles is not None and not screened \
                    and may_hold_secret(record.decode(), self._needles):
                return REDACT
            if len(record) > self._max_record:
                self._need = len(record)
                return TOO_LARGE
            if not self._cursor._put(record):
                self._need = len(record) + 1
                return NO_ROOM
            self._seq = seq
            ring = not self._rung
            self._rung = True
        if ring:
            self._wake()
        return seq

    def take(self) -> tuple[bool, int]:
        """``(rung, tail)``: whether a doorbell is due (clearing it), and the spool's tail."""
        with self._lock:
            rung, self._rung = self._rung, False
            return rung, self._cursor.tail

    def close(self) -> None:
        """From now on :meth:`commit` returns :data:`CLOSED`."""
        with self._lock:
            self._closed = True


Cursor: type[CursorLike]
Journal: type[JournalLike]
#: True when the compiled journal is in use (``ISOLANE_PURE_PYTHON=1`` forces the Python one).
COMPILED: bool
if os.environ.get("ISOLANE_PURE_PYTHON") == "1":
    Cursor, Journal, COMPILED = PyCursor, PyJournal, False
else:
    try:
        from isolane.worker._journal import Cursor, Journal  # type: ignore[import-not-found,no-redef]
        COMPILED = True
    except ImportError:  # built without a compiler: the Python journal, same behaviour, slower
        Cursor, Journal, COMPILED = PyCursor, PyJournal, False
