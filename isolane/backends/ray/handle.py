"""The Ray backend's worker handle: a run's worker as the parent reaches it through its relay.

:class:`RayWorker` is the :class:`~isolane.backends.interface.WorkerHandle` that
:class:`~isolane.backends.ray.backend.RayBackend` hands the monitor. It iterates the relay's
streaming generator (items tagged as in :mod:`isolane.backends.ray.relay`: spool bytes, blobs,
the exit status), cuts the spool bytes into complete records as a local reader does, stores
shipped blobs under their verified hash, and maps a lost actor or node to a ``crashed`` cause
that names the node. Cancel and human answers are actor calls; ``kill_tree`` kills the worker's
tree through the relay, then lets the relay clean up and ends it (it is detached: nobody else
would).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.to_thread
import orjson
import ray
import ray.exceptions

from isolane.backends.interface import WorkerExit
from isolane.backends.ray.relay import BLOB, EXIT, LINES
from isolane.errors import InvalidEvent
from isolane.schemas.blobs import BlobStore
from isolane.schemas.spool import LineSplitter, SpoolSpan

__all__ = ["Placement", "RayWorker"]

log = logging.getLogger(__name__)

#: Items in flight between the relay and the parent (Ray back-pressure on the generator).
_IN_FLIGHT: Final = 64


@dataclass(frozen=True, slots=True)
class Placement:
    pid: int
    create_time: float
    node_id: str
    ip: str
    host: str
    shared: bool

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> Placement:
        return cls(pid=int(info["pid"]), create_time=float(info["create_time"]),
                   node_id=str(info["node_id"]), ip=str(info["ip"]), host=str(info["host"]),
                   shared=bool(info.get("shared", True)))

    @property
    def location(self) -> str:
        return f"ray node {self.node_id} ({self.ip}, {self.host})"


class RayWorker:
    """A :class:`~isolane.backends.interface.WorkerHandle` on a worker relayed by a Ray actor.

    ``since_seq`` set: a re-attached handle, streaming the relay's spool after that sequence
    number. ``blob_dir`` set: the worker's files live on its node; the blobs the relay ships
    are verified and stored there (the parent's blob store).
    """

    def __init__(self, run_id: str, actor: Any, placement: Placement, *, kill_timeout: float,
                 reattach: Mapping[str, Any], since_seq: int | None = None,
                 blob_dir: str | None = None) -> None:
        self._run_id = run_id
        self._actor = actor
        self._placement = placement
        self._kill_timeout = kill_timeout
        self._exit: WorkerExit | None = None
        self._exited = anyio.Event()
        self._stream_scope: anyio.CancelScope | None = None
        self._killed = False
        self._blobs = BlobStore(blob_dir) if blob_dir is not None and not placement.shared else None
        #: What a new parent needs to find this worker again (stored in ``runs.meta``).
        self.reattach: Mapping[str, Any] = dict(reattach)
        self._stream = actor.stream.options(
            num_returns="streaming", _generator_backpressure_num_objects=_IN_FLIGHT).remote(since_seq)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def pid(self) -> int:
        return self._placement.pid

    @property
    def create_time(self) -> float:
        return self._placement.create_time

    @property
    def location(self) -> str:
        return self._placement.location

    def _finish(self, result: WorkerExit) -> None:
        if self._exit is None:
            self._exit = result
            self._exited.set()

    async def wait(self) -> WorkerExit:
        await self._exited.wait()
        assert self._exit is not None
        return self._exit

    async def records(self) -> AsyncIterator[SpoolSpan]:
        lines = LineSplitter()
        try:
            with anyio.CancelScope() as scope:
                self._stream_scope = scope
                async for ref in self._stream:
                    item = await ref
                    if not isinstance(item, bytes) or not item:
                        raise TypeError(f"the relay sent a {type(item).__name__}, not bytes")
                    tag, body = item[:1], item[1:]
                    if tag == LINES:
                        result = lines.feed(body)
                    elif tag == BLOB:
                        result = await self._store_blob(body)
                    elif tag == EXIT:
                        code = orjson.loads(body).get("exit_code")
                        self._finish(WorkerExit(code if isinstance(code, int) else None))
                        continue
                    else:
                        raise TypeError(f"the relay sent an item tagged {tag!r}")
                    if result.data or result.problems:
                        yield result
        except (ray.exceptions.RayError, TypeError) as exc:
            self._finish(WorkerExit(None, await self._loss_cause(exc)))
        finally:
            self._stream_scope = None
        if self._exit is None:
            self._finish(WorkerExit(None, f"the Ray stream from {self.location} ended without "
                                          "the worker's exit status"))
        torn = lines.finish()  # the worker died inside a record: reported, never half-stored
        if torn:
            yield SpoolSpan(problems=torn)

    async def _store_blob(self, body: bytes) -> SpoolSpan:
        """Store a shipped blob in the parent's blob store, if its bytes match its name."""
        claimed, data = body[:64].decode("ascii", "replace"), body[64:]
        if self._blobs is None:
            return SpoolSpan()
        blobs = self._blobs
        actual = await anyio.to_thread.run_sync(lambda: blobs.put_bytes(data))
        if actual == claimed:
            return SpoolSpan()
        return SpoolSpan(problems=[InvalidEvent(
            f"a blob shipped from {self.location} as {claimed!r} hashes to {actual}; it is stored "
            "under its real hash only", excerpt=body[:64])])

    async def _loss_cause(self, exc: BaseException) -> str:
        node = self._placement.node_id
        alive = await anyio.to_thread.run_sync(_node_alive, node)
        what = ("the actor was killed by isolane" if self._killed
                else f"node {node} died" if alive is False else "its actor died")
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return (f"{type(exc).__name__} on {self.location}: {what} (Ray does not restart it; "
                f"`isolane resume {self._run_id}` continues the run on a live node). {first}")

    def request_cancel(self) -> None:
        try:
            self._actor.cancel.remote()
        except ray.exceptions.RayError as exc:
            log.debug("run %s: cancel not delivered: %s", self._run_id, exc)

    def send_control(self, message: Mapping[str, Any]) -> None:
        if self._exited.is_set():
            raise OSError(f"the worker on {self.location} has ended")
        self._actor.send_control.remote(dict(message))

    async def kill_tree(self) -> int:
        """Kill the worker's tree through the actor, then the actor itself (``ray.kill``)."""
        killed = 0
        if not self._killed:
            with anyio.move_on_after(self._kill_timeout):
                try:
                    killed = int(await self._actor.kill_tree.remote())
                except ray.exceptions.RayError:
                    pass  # the actor is gone already: its worker went with it (parent-death signal)
            await self._release()
        if not self._exited.is_set():
            with anyio.move_on_after(self._kill_timeout):
                await self._exited.wait()
            if not self._exited.is_set():  # a hung node: stop waiting for a stream that never ends
                self._finish(WorkerExit(None, f"killed through Ray; {self.location} did not confirm "
                                              f"within {self._kill_timeout:g} s (node hung?)"))
                if self._stream_scope is not None:
                    self._stream_scope.cancel()
        return killed

    async def _release(self) -> None:
        """Let the relay clean its node-local files, then end it (it is detached: nobody else will)."""
        if self._killed:
            return
        self._killed = True
        with anyio.move_on_after(self._kill_timeout):
            try:
                await self._actor.release.remote()
            except ray.exceptions.RayError:
                pass
        try:
            ray.kill(self._actor, no_restart=True)
        except ray.exceptions.RayError:
            pass

    async def aclose(self) -> None:
        await self._release()


def _node_alive(node_id: str) -> bool | None:
    try:
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            if node.get("NodeID") == node_id:
                return bool(node.get("Alive"))
    except Exception:  # noqa: BLE001 - the GCS is unreachable: say nothing about the node
        return None
    return False
