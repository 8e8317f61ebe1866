"""The node side of the Ray backend: one relay actor per run, wherever Ray places it.

::

    RayBackend (parent)                          RunRelay (async Ray actor: detached, named)
    warm() ────────────────────────────────────▶ forkserver started, its preload imported
    probe(run_dir, token) ─────────────────────▶ is the parent's run directory here too?
    start(spec, shared, workspace) ────────────▶ shared: the parent's paths, as they are
                                                 ship: paths under this node's own directory,
                                                 the workspace written from shipped blobs
                                                 Launcher.spawn ─▶ worker_main (a child)
    bell task: the worker's doorbells (its spool tail) wake every stream
    stream(None)  ◀── L + spool bytes ────────── this attempt's records, as the worker completes
                                                 them (up to each doorbell; after the exit, up to
                                                 the last byte it wrote)
    stream(seq)   ◀── L + spool bytes after seq  a re-attach: the same, from the first record
                                                 after seq (found by bisection)
                  ◀── B + sha256 + blob bytes ── ship: files the worker stored, from its outbox
                  ◀── X + {"exit_code": …} ───── the last item
    cancel · send_control · kill_tree · release

**Detaching.** Every stream reads the worker's spool on this node (see
:mod:`isolane.schemas.spool`); the bell task alone reads the event pipe, so the worker never
blocks on it. When a stream's consumer goes away (the parent died: Ray closes the generator),
the worker goes on into its spool. A new parent calls ``stream(seq)`` with the last sequence
number its store holds, and the relay sends the records after it. The relay sends bytes as the
spool holds them; the parent cuts them into records and validates each one.

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
from isolane.schemas.spool import DoorbellReader, find_tail, read_raw
from isolane.schemas.spool_seek import offset_after
from isolane.tracking.workspace import WorkspaceFile, write_workspace

__all__ = ["BLOB", "EXIT", "LINES", "TOKEN_FILE", "RunRelay"]

log = logging.getLogger(__name__)

LINES: Final = b"L"  # the rest of the item: the spool's next bytes, in order
BLOB: Final = b"B"  # the rest: 64 hex digits of SHA-256, then the blob's bytes
EXIT: Final = b"X"  # the rest: {"exit_code": int | null}; the last item of a stream

#: A file in the parent's run directory whose content proves the directory is shared.
TOKEN_FILE: Final = ".isolane-relay-token"

#: At most this many bytes of events per stream item.
_MAX_ITEM: Final = 4 << 20
#: A stream looks at the spool at least this often (doorbells wake it sooner).
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
        self._outbox: BlobStore | None = None
        self._local_root: Path | None = None
        self._tail = 0  # the spool tail the worker's last doorbell announced
        self._bell: asyncio.Task[None] | None = None
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
        worker = await loop.run_in_executor(None, self._launcher.spawn, spec)
        self._worker = worker
        self._tail = worker.spool_start
        self._exited = asyncio.Event()
        loop.add_reader(worker.sentinel, self._on_exit)
        self._bell = loop.create_task(self._follow_doorbells())
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
        """The run's records from the start of this attempt (``since_seq`` None), or after
        ``since_seq`` (a parent re-attaching), then live until the worker has exited."""
        worker, exited = self._require_worker(), self._exited
        assert exited is not None
        loop = asyncio.get_running_loop()
        fd = worker.spool_fd
        # A multi-day run's spool is large: find the first record to send by bisection (records
        # are in seq order), off the event loop.
        offset = (worker.spool_start if not since_seq else await loop.run_in_executor(
            None, offset_after, fd, worker.spool_start, since_seq))
        ready = asyncio.Event()
        self._waiters.add(ready)
        try:
            while True:
                done = exited.is_set()  # before the read: a read after the exit sees everything
                upto = (await loop.run_in_executor(None, find_tail, fd))[1] if done else self._tail
                chunk = read_raw(fd, offset, min(upto - offset, _MAX_ITEM), live=not done)
                offset += len(chunk)
                for blob in self._take_blobs():
                    yield blob
                if chunk:
                    yield LINES + chunk
                if len(chunk) == _MAX_ITEM:
                    continue  # more is waiting
                if done:
                    break
                ready.clear()
                try:
                    await asyncio.wait_for(ready.wait(), _SPOOL_POLL)
                except TimeoutError:
                    pass
        finally:
            self._waiters.discard(ready)
        for blob in self._take_blobs():
            yield blob
        yield self._exit_item()

    async def _follow_doorbells(self) -> None:
        """Read the worker's doorbells for as long as its pipe is open; wake every stream."""
        worker = self._require_worker()
        bells = DoorbellReader(worker.event_fd)
        readable = asyncio.Event()
        while not bells.eof:
            await _until_readable(worker.event_fd, readable)
            self._tail = max(self._tail, bells.read())
            self._notify()

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
