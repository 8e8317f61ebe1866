"""The worker's end of its spool: records copied into a shared mapping of the file.

::

    SpoolWriter(path)   open (no link, regular file) · take the writer lock · find the tail ·
                        clear a torn remnant · allocate GROWTH_BYTES ahead · map that window
    append(record)      the cursor copies the record's bytes into the window, then stores b"\\n"
                        (published); the emitter's journal composes events into the same cursor
    make_room(need)     past the window: allocate the next span of the file, map it, unmap the old
    close()             unmap, truncate the file to its last record (plain JSON Lines), unlock

The mapping is ``MAP_SHARED``: a copy into it is a write into the kernel's page cache for that
file, which outlives the process. A worker SIGKILLed the instant after :meth:`SpoolWriter.append`
returned leaves the record in the file, with no system call on the way. Only a crash of the
machine itself can lose it (nothing is fsynced). The format, and how readers take only complete
records, is :mod:`isolane.schemas.spool`.

Only one window of :data:`~isolane.schemas.spool.GROWTH_BYTES` (or one record, if larger) is
mapped at a time, so the worker's address space does not grow with the spool. Space is allocated
with ``posix_fallocate`` before it is mapped: a full disk is an error at growth, never a SIGBUS
in the middle of a copy.
"""

from __future__ import annotations

import mmap
import os
from typing import Final

from isolane.schemas.spool import (
    GROWTH_BYTES,
    SpoolError,
    find_tail,
    lock_writer,
    open_spool,
)
from isolane.worker.journal import Cursor, CursorLike

__all__ = ["SpoolWriter"]

_PAGE: Final = mmap.ALLOCATIONGRANULARITY


class SpoolWriter:
    """Appends records to a run's spool. Not thread-safe: the emitter serialises appends.

    ``identity`` (``(st_dev, st_ino)``), when given, is the file the parent opened for reading:
    a spool that is another file by the time the worker opens it is refused. ``max_bytes``
    bounds the file: past it (checked as each window is mapped, so within ``growth`` bytes)
    :attr:`over_limit` is set, and ``reserve`` bytes later :meth:`make_room` raises
    :class:`~isolane.schemas.spool.SpoolError` rather than grow the file any further.

    Records are copied in by :attr:`cursor` (see :mod:`isolane.worker.journal`): by
    :meth:`append`, or by the emitter's journal, which composes events straight into it.
    """

    __slots__ = ("_allocated", "_fd", "_growth", "_limit", "_map", "cursor", "over_limit", "path",
                 "start")

    def __init__(self, path: str | os.PathLike[str], *, identity: tuple[int, int] | None = None,
                 growth: int = GROWTH_BYTES, max_bytes: int | None = None,
                 reserve: int = 1 << 20) -> None:
        if growth <= 0 or growth % _PAGE:
            raise ValueError(f"growth must be a positive multiple of {_PAGE}")
        self.path = os.fspath(path)
        self._growth = growth
        self._limit = (max_bytes, max_bytes + reserve) if max_bytes is not None else None
        #: The file passed ``max_bytes``: the run should stop (its last events still fit).
        self.over_limit = False
        fd = open_spool(path, write=True, create=True)
        try:
            lock_writer(fd)
            info = os.fstat(fd)
            if identity is not None and (info.st_dev, info.st_ino) != tuple(identity):
                raise SpoolError(f"the spool {self.path} is not the file the parent opened (it was "
                                 "replaced); refusing to write it")
            complete, data_end = find_tail(fd)
            if data_end > complete:  # a torn record of an earlier attempt: clear it first
                os.pwrite(fd, bytes(data_end - complete), complete)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._allocated = info.st_size
        #: Where this writer started (the end of earlier attempts' records).
        self.start = complete
        #: The mapped window records are copied into.
        self.cursor: CursorLike = Cursor(complete)
        self._map: mmap.mmap | None = None
        self._map_window(0)
        if self.over_limit:  # already past it (an earlier attempt): say so at the first record
            self.cursor.unmap()  # (the window stays mapped: close() unmaps it)

    @property
    def tail(self) -> int:
        """The offset just after the last record written: where the next one goes."""
        return self.cursor.tail

    def append(self, record: bytes) -> bool | None:
        """Write one record (JSON bytes without newline) and publish it.

        Returns :attr:`over_limit` when a window was mapped for it (the only time the limit is
        checked), else ``None``: a caller learns of the limit at no cost per record.
        """
        if self.cursor.put(record):
            return None
        over = self.make_room(len(record) + 1)
        if not self.cursor.put(record):
            raise SpoolError(f"the spool {self.path} has no room for a record of {len(record)} "
                             "bytes after growing")  # make_room maps at least that much
        return over

    def make_room(self, need: int) -> bool:
        """Map a window that holds ``need`` more bytes at the tail (unless the current one does);
        return :attr:`over_limit`. The caller serialises it with every other writer's call."""
        if self.cursor.free < need:
            self._map_window(need)
        return self.over_limit

    def _map_window(self, need: int) -> None:
        pos = self.cursor.tail
        base = pos - pos % _PAGE
        length = max(self._growth, -(-(pos - base + need) // _PAGE) * _PAGE)
        limit = self._limit
        if limit is not None and base + length > limit[0]:
            if pos + need > limit[1]:
                raise SpoolError(f"the spool {self.path} is full: {pos + need} bytes would pass "
                                 f"its limit of {limit[0]} bytes and its reserve")
            self.over_limit = True
            length = min(length, -(-(limit[1] - base) // _PAGE) * _PAGE)
        if base + length > self._allocated:
            try:
                os.posix_fallocate(self._fd, self._allocated, base + length - self._allocated)
            except OSError as exc:
                raise SpoolError(f"cannot grow the spool {self.path}: {exc.strerror} (is the disk "
                                 "full?)") from exc
            self._allocated = base + length
        window = mmap.mmap(self._fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                           offset=base)
        old, self._map = self._map, window
        self.cursor.map(window, base)  # from the tail as it is now (a journal may have moved it)
        if old is not None:
            old.close()

    def close(self) -> None:
        """Unmap, cut the file at its last record and release the writer lock."""
        if self._map is None:
            return
        self.cursor.unmap()
        tail = self.cursor.tail
        self._map.close()
        self._map = None
        try:
            os.ftruncate(self._fd, tail)
        finally:
            os.close(self._fd)
