"""File tracking in the worker: changes in the run's work dir become ``file_*`` events.

::

    ctx.node(...) ends ──on_node_end──▶ FileScanner.scan(node)  ┐   before the node's final
    capture: code_execution / tool_result ──observe──▶ scan()   ├─▶ dag_node_update, so the files
    run ends (completed, failed, cancelled) ──────────▶ scan()  ┘   belong to the node
        │ walk work_dir (links skipped, never followed: isolane.schemas.paths)
        │ lstat each file: (mtime, ctime, size, inode) unchanged since the last scan → skip
        │ else open (no link followed) and read once: SHA-256 + copy into the blob store
        └─▶ emit file_created / file_modified (new content) · file_deleted (path gone)

Every scan compares the whole directory with what the previous scan saw, so whatever wrote a file
(the workflow, an agent's code, a subprocess, a daemon it left behind) is seen at the next scan,
and no file is missed when a node ends. A scan costs one ``lstat`` per file plus one read of each
file that changed.

The stat key is a cheap filter, never the truth: timestamps have a coarse granularity, so a file
written twice within one tick keeps its mtime. A file whose mtime is close to the scan's start
("racily clean", as git calls it) is hashed again at the next scan; an event is emitted only
when the content hash differs from the path's last version.

Events carry the path relative to the work dir (``/``-separated), size and SHA-256 of the bytes
read, ``version`` (1, 2, … per path, continuing across resumes and deletions), the phase, the
agent last seen acting in the node (AG2 capture) and ``stored`` (the bytes are in the blob
store; files over ``max_blob_bytes`` are not).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from isolane.errors import PathEscape
from isolane.schemas.blobs import BlobStore, hash_fd
from isolane.schemas.paths import open_inside, walk_files
from isolane.schemas.payloads import FileDeleted, FileEvent
from isolane.worker.emitter import Emit

if TYPE_CHECKING:
    from isolane.worker.context import NodeEnd, RunContext

__all__ = ["FileScanner", "ScanResult", "final_scan", "track_files"]

log = logging.getLogger(__name__)


#: A file modified this close to a scan's start is hashed again at the next scan (the kernel's
#: file timestamps lag the wall clock by up to a tick, 1–10 ms; the margin is generous).
_RACY_NS: Final = 100_000_000
#: Events after which the capture triggers a scan: the code or tool may have written files.
_SCAN_AFTER: Final = frozenset({"code_execution", "tool_result"})

StatKey = tuple[int, int, int, int]


@dataclass(slots=True)
class _Tracked:
    version: int
    sha256: str
    size: int
    key: StatKey | None  # None: hash at the next scan
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one scan found: files seen, files read (hashed), events emitted by kind."""

    seen: int = 0
    hashed: int = 0
    created: int = 0
    modified: int = 0
    deleted: int = 0

    @property
    def changes(self) -> int:
        return self.created + self.modified + self.deleted


def _stat_key(info: os.stat_result) -> StatKey:
    return (info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino)


class FileScanner:
    """Tracks the files under ``root`` and reports each change once, as a typed event.

    Thread-safe: scans are serialised. ``emit(type, data, node_id)`` sends an event (``node_id``
    ``None`` means the node current in the caller); ``phase()`` and ``current_node()`` give the
    context. ``blobs=None`` stores no content (every event says ``stored: false``). ``baseline``
    is what an earlier worker of the run (or the run a branch starts from) already reported,
    as under :data:`FILES_RESUME_KEY`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        emit: Emit,
        phase: Callable[[], str | None] = lambda: None,
        current_node: Callable[[], str | None] = lambda: None,
        blobs: BlobStore | None = None,
        max_blob_bytes: int | None = None,
        baseline: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if max_blob_bytes is not None and max_blob_bytes < 0:
            raise ValueError(f"max_blob_bytes cannot be negative, got {max_blob_bytes}")
        self.root: Final = Path(root).resolve()
        self.blobs = blobs
        self.max_blob_bytes = max_blob_bytes
        self._emit = emit
        self._phase = phase
        self._current_node = current_node
        self._lock = threading.RLock()
        self._files: dict[str, _Tracked] = {}
        for path, entry in (baseline or {}).items():
            self._files[path] = _Tracked(int(entry["version"]), str(entry.get("sha256", "")),
                                         int(entry.get("size", 0)), None,
                                         bool(entry.get("deleted", False)))
        self._agents: dict[str | None, str] = {}  # node → agent last seen acting in it

    # -- agents ---------------------------------------------------------------------------------

    def note_agent(self, agent: str | None, node_id: str | None = None) -> None:
        """Attribute files found later in ``node_id`` (default: the current node) to ``agent``."""
        node = node_id if node_id is not None else self._current_node()
        if agent:
            self._agents[node] = agent
        else:
            self._agents.pop(node, None)

    def observe(self, type_: str, data: Mapping[str, Any], node_id: str | None = None) -> None:
        """Look at an event the AG2 capture emitted: note who acts; scan after code or a tool.

        A non-silent message's sender, or the agent that ran code or a tool, becomes the
        node's agent.
        """
        agent: Any = None
        if type_ == "agent_message" and not data.get("silent"):
            agent = data.get("sender")
        elif type_ in ("code_execution", "tool_call", "tool_result"):
            agent = data.get("agent")
        if isinstance(agent, str) and agent:
            self.note_agent(agent, node_id)
        if type_ in _SCAN_AFTER:
            self.scan(node_id)

    def observing(self, emit: Emit) -> Emit:
        """Wrap a sink's ``emit`` so that every event also goes through :meth:`observe`."""

        def emit_and_observe(type_: str, data: dict[str, Any], node_id: str | None = None) -> int:
            seq = emit(type_, data, node_id)
            try:
                self.observe(type_, data, node_id)
            except Exception:  # tracking must never break the capture
                log.exception("file scan after %s failed", type_)
            return seq

        return emit_and_observe

    # -- scanning -------------------------------------------------------------------------------

    def on_node_end(self, end: NodeEnd) -> None:
        """``ctx.on_node_end`` hook: scan, attributing what changed to the node that ends."""
        self.scan(end.node_id)
        self._agents.pop(end.node_id, None)

    def scan(self, node_id: str | None = None) -> ScanResult:
        """Compare the directory with the previous scan and emit one event per change.

        ``node_id`` is the node the changes belong to (``None``: the current node). Returns
        the counts. Files that vanish or turn into links while being read count as gone.
        """
        with self._lock:
            node = node_id if node_id is not None else self._current_node()
            agent = self._agents.get(node)
            phase = self._phase()
            started = time.time_ns()
            seen: set[str] = set()
            hashed = created = modified = deleted = 0
            try:
                paths = sorted(p.as_posix() for p in walk_files(self.root))
            except FileNotFoundError:  # the workflow removed its own directory
                paths = []
            for rel in paths:
                try:
                    info = os.lstat(self.root / rel)
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                key = _stat_key(info)
                tracked = self._files.get(rel)
                if tracked is not None and not tracked.deleted and tracked.key == key:
                    seen.add(rel)
                    continue
                read = self._read(rel)
                if read is None:
                    continue  # gone, or no longer a regular file: not seen
                seen.add(rel)
                if isinstance(read, str):
                    continue  # exists, but we may not read it: keep what we knew
                hashed += 1
                sha256, size, stored, mode = read
                racy = info.st_mtime_ns >= started - _RACY_NS
                if tracked is not None and not tracked.deleted and tracked.sha256 == sha256:
                    tracked.key = None if racy else key
                    continue
                if tracked is None or tracked.deleted:
                    type_, created = "file_created", created + 1
                else:
                    type_, modified = "file_modified", modified + 1
                version = tracked.version + 1 if tracked is not None else 1
                self._files[rel] = _Tracked(version, sha256, size, None if racy else key)
                data: dict[str, Any] = msgspec.to_builtins(FileEvent(
                    path=rel, size=size, sha256=sha256, version=version, phase=phase, agent=agent,
                    stored=stored))
                data["mode"] = mode
                self._emit(type_, data, node)
            for rel, tracked in sorted(self._files.items()):
                if rel in seen or tracked.deleted:
                    continue
                tracked.version += 1
                tracked.deleted = True
                tracked.key = None
                deleted += 1
                self._emit("file_deleted", msgspec.to_builtins(FileDeleted(
                    path=rel, version=tracked.version, phase=phase, agent=agent)), node)
            return ScanResult(len(seen), hashed, created, modified, deleted)

    def _read(self, rel: str) -> tuple[str, int, bool, int] | Literal["unreadable"] | None:
        """``(sha256, size, stored, mode)`` of the file's current bytes; ``None`` if it is
        gone or is not a regular file any more; ``"unreadable"`` if permissions forbid."""
        try:
            # Hard links are allowed here: reading one gives the worker nothing it could not
            # read itself, and tools (uv, pip caches) create them legitimately.
            fd = open_inside(self.root, rel, os.O_RDONLY | os.O_NONBLOCK, allow_hardlinks=True)
        except PathEscape as exc:
            log.debug("not tracking %s: %s", rel, exc)
            return None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                log.warning("cannot track %s in the work dir: %s", rel, exc)
                return "unreadable"
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENXIO, errno.ELOOP):
                log.warning("cannot read %s in the work dir: %s", rel, exc)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None  # swapped for a FIFO or device since the walk: never read those
            mode = info.st_mode & 0o777
            if self.blobs is None:
                return (*hash_fd(fd), False, mode)
            ingested = self.blobs.ingest(fd, max_bytes=self.max_blob_bytes)
            return ingested.sha256, ingested.size, ingested.stored, mode
        except OSError as exc:
            log.warning("cannot read %s in the work dir: %s", rel, exc)
            return None
        finally:
            os.close(fd)


def track_files(ctx: RunContext, *, blob_dir: str | None, max_blob_bytes: int | None,
                baseline: Mapping[str, Mapping[str, Any]] | None = None) -> FileScanner:
    """Track ``ctx.work_dir`` for the run: scan at every node end; set ``ctx.files``."""
    scanner = FileScanner(ctx.work_dir, emit=ctx.emit_event, phase=lambda: ctx.current_phase,
                          current_node=lambda: ctx.current_node,
                          blobs=BlobStore(blob_dir) if blob_dir else None,
                          max_blob_bytes=max_blob_bytes, baseline=baseline)
    ctx.files = scanner
    ctx.on_node_end.append(scanner.on_node_end)
    return scanner


def final_scan(ctx: RunContext | None) -> None:
    """The scan at the end of a run, whatever its outcome; never raises an ``Exception``."""
    if ctx is None or ctx.files is None:
        return
    try:
        ctx.files.scan()
    except Exception:  # the run's outcome matters more than its last scan
        log.exception("the final file scan failed")
