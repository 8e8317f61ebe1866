"""The node side of the Ray backend: one relay actor per run, wherever Ray places it.

::

    RayBackend (parent)                          RunRelay (async Ray actor: detached, named)
    warm() ────────────────────────────────────▶ forkserver started, its preload imported
    probe(run_dir, token) ─────────────────────▶ is the parent's run directory here too?
    start(spec, shared, workspace) ────────────▶ shared: the parent's paths, as they are
                                                 ship: paths under this node's own directory,
                                                 the workspace written from shipped blobs
                                                 Launcher.spawn ─▶ worker_main (a child)
    stream(None)  ◀── D + raw event-pipe bytes ─ the first attach: the pipe, relayed as read
    stream(seq)   ◀── L + spool lines after seq  a re-attach: the worker's spool on this node
                  ◀── B + sha256 + blob bytes ── ship: files the worker stored, from its outbox
                  ◀── X + {"exit_code": …} ───── the last item
    cancel · send_control · kill_tree · release

**Detaching.** The first stream reads the worker's event pipe. When its consumer goes away (the
parent died: Ray closes the generator), a drain task takes the pipe over and discards what it
reads: the worker wrote every frame to its spool before the pipe, so nothing is lost and the
worker never blocks on a full pipe. A new parent calls ``stream(seq)`` with the last sequence
number its store holds; the relay replays the spool's later lines and follows it, woken by the
drain, until the worker has exited.

**Files.** With ``shared`` (the parent's run directory is visible here: a local cluster or a
shared filesystem, proved by a token file the parent wrote) the worker uses the parent's paths.
Otherwise (``ship``) the worker's directory, spool and blob outbox live under this node's
temporary directory, the files a resumed run or a branch starts with arrive as blobs, and each
blob the worker stores is sent to the parent in the stream, whose blob store verifies its hash.

**Lifetime.** The actor is detached so that a parent crash does not end the run. It ends when
the parent releases and kills it; by itself ``orphan_grace`` seconds after its worker exited if
no parent released it; and, as an idle pool actor, ``idle_timeout`` seconds after ``warm()`` if
no run claimed it.

Everything the parent receives is ``bytes``; the parent validates every frame and every blob.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import orjson
import ray

from isolane.backends.local.launcher import Launcher, WorkerProcess
from isolane.errors import BlobError
from isolane.schemas.blobs import BlobStore
from isolane.schemas.spec import WorkerSpec
from isolane.schemas.spool import read_spool, split_complete, spool_offset_after
from isolane.tracking.workspace import WorkspaceFile, write_workspace

__all__ = ["BLOB", "DATA", "EXIT", "LINES", "TOKEN_FILE", "RunRelay"]

log = logging.getLogger(__name__)

DATA: Final = b"D"  # the rest of the item: raw bytes of the event pipe, in order
LINES: Final = b"L"  # the rest: complete spool lines (one frame each), in order
BLOB: Final = b"B"  # the rest: 64 hex digits of SHA-256, then the blob's bytes
EXIT: Final = b"X"  # the rest: {"exit_code": int | null}; the last item of a stream

#: A file in the parent's run directory whose content proves the directory is shared.
TOKEN_FILE: Final = ".isolane-relay-token"

_READ_CHUNK: Final = 1 << 20
#: At most this many bytes of events per stream item (the emitter batches many per frame).
_MAX_ITEM: Final = 4 << 20
#: A re-attached stream looks at the spool at least this often (the drain also wakes it).
_SPOOL_POLL: Final = 0.05


class RunRelay:
    """The Ray actor of one run: starts isolane's worker on its node and relays its events."""

    def __init__(self, start_method: str | None, env_allow: list[str], preload: list[str], *,
                 orphan_grace: float | None = None, idle_timeout: float | None = None) -> None:
        self._launcher = Launcher(start_method=start_method, env_allow=env_allow, preload=preload,
                                      sweep_cgroups=False)
        self._orphan_grace = orphan_grace
        self._idle_timeout = idle_timeout
        self._worker: WorkerProcess | None = None
        self._spool: Path | None = None
        self._spool_start = 0
        self._outbox: BlobStore | None = None
        self._local_root: Path | None = None
        self._pipe_taken = False
        self._pipe_relayed = False  # a stream is reading the pipe right now
        self._drain: asyncio.Task[None] | None = None
        self._exited: asyncio.Event | None = None
        self._waiters: set[asyncio.Event] = set()
        self._idle: asyncio.TimerHandle | None = None
        self._released = False

    # -- setting up --------------------------------------------------------------------------

    async def warm(self) -> str:
        """Start the forkserver and finish its preload; returns this node's id."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._launcher.warm)
        if self._idle_timeout and self._worker is None and self._idle is None:
            self._idle = loop.call_later(self._idle_timeout, self._expire_idle)
        return str(ray.get_runtime_context().get_node_id())

    def _expire_idle(self) -> None:
        if self._worker is None:
            log.info("relay unclaimed for %.0f s; exiting", self._idle_timeout or 0)
            os._exit(0)

    async def probe(self, run_dir: str, token: str) -> bool:
        """Whether the parent's run directory is visible on this node (a shared filesystem)."""
        try:
            return (Path(run_dir) / TOKEN_FILE).read_text() == token
        except (OSError, UnicodeDecodeError):
            return False

    async def start(self, spec: WorkerSpec, shared: bool,
                    workspace: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start the run's worker; ``workspace`` (ship) is ``{"files": {path: sha}, "blobs":
        {sha: bytes}}``, the files it starts with."""
        if self._worker is not None:
            raise RuntimeError("this relay already runs a worker; a relay serves one attempt")
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        loop = asyncio.get_running_loop()
        if not shared:
            spec = await loop.run_in_executor(None, self._place_locally, spec, workspace or {})
        self._spool = Path(spec.spool_path)
        try:
            self._spool_start = self._spool.stat().st_size  # earlier attempts' lines stay behind
        except FileNotFoundError:
            self._spool_start = 0
        worker = await loop.run_in_executor(None, self._launcher.spawn, spec)
        self._worker = worker
        self._exited = asyncio.Event()
        loop.add_reader(worker.sentinel, self._on_exit)
        return self.placement()

    def _place_locally(self, spec: WorkerSpec, workspace: Mapping[str, Any]) -> WorkerSpec:
        node = str(ray.get_runtime_context().get_node_id())[:16]
        base = Path(tempfile.gettempdir()) / "isolane-ray" / node
        root = base / spec.run_id
        work = root / "work"
        work.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self._local_root = root
        outbox = root / "outbox"
        self._outbox = BlobStore(outbox)
        files: Mapping[str, str] = workspace.get("files") or {}
        blobs: Mapping[str, bytes] = workspace.get("blobs") or {}
        if files:
            cache = BlobStore(base / "blobs")
            for sha256, data in blobs.items():
                if cache.put_bytes(data) != sha256:
                    raise ValueError(f"a shipped blob does not hash to its name {sha256}")
            rows = {path: WorkspaceFile(run_id=spec.run_id, seq=0, path=path, sha256=sha256, size=0,
                                        version=0, node_id=None, phase=None, agent=None,
                                        kind="created", ts=0.0)
                    for path, sha256 in files.items()}
            write_workspace(cache, rows, work, force=True)
        return replace(spec, work_dir=str(work), spool_path=str(root / "events.jsonl"),
                       blob_dir=str(outbox) if spec.blob_dir is not None else None)

    def placement(self) -> dict[str, Any]:
        """Where the worker runs, and whether it is still running."""
        worker = self._require_worker()
        return {"pid": worker.pid, "create_time": worker.create_time,
                "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
                "host": socket.gethostname(), "running": not self._exited_now(),
                "shared": self._local_root is None}

    def _require_worker(self) -> WorkerProcess:
        if self._worker is None:
            raise RuntimeError("the relay has no worker: call start() first")
        return self._worker

    def _exited_now(self) -> bool:
        return self._exited is not None and self._exited.is_set()

    def _on_exit(self) -> None:
        worker, exited = self._require_worker(), self._exited
        assert exited is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.sentinel)
        exited.set()
        self._notify()
        if self._orphan_grace:
            loop.call_later(self._orphan_grace, self._expire_orphan)

    def _expire_orphan(self) -> None:
        if not self._released:
            log.warning("no parent collected run %s within %.0f s of its end; the relay exits "
                        "(its node-local files stay in %s)", self._require_worker().run_id,
                        self._orphan_grace or 0, self._local_root or "the parent's run directory")
            os._exit(0)

    def _notify(self) -> None:
        for event in self._waiters:
            event.set()

    # -- streaming ---------------------------------------------------------------------------

    async def stream(self, since_seq: int | None = None) -> AsyncIterator[bytes]:
        """The run's events from the start of this attempt (``None``: live from the pipe, once)
        or after ``since_seq`` (from the spool: a parent re-attaching); see the module doc."""
        self._require_worker()
        if since_seq is None and not self._pipe_taken:
            self._pipe_taken = True
            source = self._from_pipe()
        else:
            self._start_drain()
            source = self._from_spool(since_seq or 0)
        async for item in source:
            yield item

    async def _from_pipe(self) -> AsyncIterator[bytes]:
        worker, exited = self._require_worker(), self._exited
        assert exited is not None
        fd = worker.event_fd
        os.set_blocking(fd, False)
        ready = asyncio.Event()
        self._waiters.add(ready)
        self._pipe_relayed = True
        eof = False
        try:
            while True:
                if not exited.is_set() and not eof:
                    await _until_readable(fd, ready)
                data, eof = _read_available(fd)
                for blob in self._take_blobs():
                    yield blob
                if data:
                    yield DATA + data
                if len(data) >= _MAX_ITEM:
                    continue  # more is waiting: no need to wait for readiness
                if eof:
                    await exited.wait()
                    break
                if exited.is_set() and not data:
                    break
        except BaseException:
            self._pipe_relayed = False
            if not eof:  # the consumer went away (parent gone): keep the pipe flowing
                self._start_drain()
            raise
        finally:
            self._pipe_relayed = False
            self._waiters.discard(ready)
        for blob in self._take_blobs():
            yield blob
        yield self._exit_item()

    def _start_drain(self) -> None:
        """Keep the pipe flowing once no stream relays it (a re-attached stream reads the spool)."""
        self._pipe_taken = True
        if self._drain is None and not self._pipe_relayed:
            self._drain = asyncio.get_running_loop().create_task(self._drain_pipe())

    async def _drain_pipe(self) -> None:
        fd = self._require_worker().event_fd
        os.set_blocking(fd, False)
        readable = asyncio.Event()
        while True:
            await _until_readable(fd, readable)
            while True:
                data, eof = _read_available(fd)
                if not data:
                    break
            self._notify()  # the spool has grown (it is written before the pipe)
            if eof:
                return

    async def _from_spool(self, since_seq: int) -> AsyncIterator[bytes]:
        spool, exited = self._spool, self._exited
        assert spool is not None and exited is not None
        ready = asyncio.Event()
        self._waiters.add(ready)
        # A multi-day run's spool is large: find the first line to send by bisection (lines are
        # in seq order), off the event loop.
        offset = await asyncio.get_running_loop().run_in_executor(
            None, spool_offset_after, spool, self._spool_start, since_seq)
        partial = b""
        try:
            while True:
                done = exited.is_set()  # before the read: a read after the exit sees everything
                chunk = read_spool(spool, offset, _MAX_ITEM)
                offset += len(chunk)
                lines, partial = split_complete(partial + chunk)
                for blob in self._take_blobs():
                    yield blob
                if lines:
                    yield LINES + lines
                if len(chunk) >= _MAX_ITEM:
                    continue
                if done:
                    break
                ready.clear()
                try:
                    await asyncio.wait_for(ready.wait(), _SPOOL_POLL)
                except TimeoutError:
                    pass
        finally:
            self._waiters.discard(ready)
        if partial:
            log.warning("run %s: the spool ends in a torn line of %d bytes (the worker died "
                        "mid-write); it is not sent", self._require_worker().run_id, len(partial))
        for blob in self._take_blobs():
            yield blob
        yield self._exit_item()

    def _exit_item(self) -> bytes:
        return EXIT + orjson.dumps({"exit_code": self._require_worker().exitcode()})

    def _take_blobs(self) -> list[bytes]:
        """The blobs the worker put in its outbox since the last call, removed from it."""
        outbox = self._outbox
        if outbox is None:
            return []
        items: list[bytes] = []
        for sha256 in outbox.digests():
            try:
                data = outbox.read(sha256)  # no link followed, hash checked at the source
            except BlobError as exc:
                log.warning("run %s: %s", self._require_worker().run_id, exc)
            else:
                items.append(BLOB + sha256.encode() + data)
            outbox.remove(sha256)
        return items

    # -- control -----------------------------------------------------------------------------

    async def cancel(self) -> None:
        if self._worker is not None:
            self._worker.request_cancel()

    async def send_control(self, message: dict[str, Any]) -> None:
        self._require_worker().control.send(message)

    async def kill_tree(self) -> int:
        return self._worker.kill_tree() if self._worker is not None else 0

    async def release(self) -> None:
        """The parent has everything: end the worker's tree and remove node-local files."""
        self._released = True
        if self._worker is not None:
            self._worker.kill_tree()
        if self._local_root is not None:
            shutil.rmtree(self._local_root, ignore_errors=True)


async def _until_readable(fd: int, ready: asyncio.Event) -> None:
    """Wait until ``fd`` is readable, or until someone else sets ``ready`` (the worker exited)."""
    loop = asyncio.get_running_loop()
    ready.clear()
    loop.add_reader(fd, ready.set)
    try:
        await ready.wait()
    finally:
        loop.remove_reader(fd)


def _read_available(fd: int) -> tuple[bytes, bool]:
    """Up to ``_MAX_ITEM`` bytes that can be read without blocking, and whether EOF was seen."""
    chunks: list[bytes] = []
    size = 0
    while size < _MAX_ITEM:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            break
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False
