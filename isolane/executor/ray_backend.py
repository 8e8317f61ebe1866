"""The Ray worker backend: one async Ray actor per run (or branch) relays isolane's normal worker.

::

    parent (Executor, RunMonitor)                       Ray node (any)
    ─────────────────────────────                       ─────────────────────────────────────────
    RayBackend.launch(spec) ──actor.start(spec)──────▶  _RunActor (async; max_restarts=0,
                                                          max_task_retries=0)
                                                          Supervisor.spawn(spec) ─▶ worker_main
                                                          (forkserver child of the actor: setsid,
                                                          scrubbed env, limits, dies with it)
    RayWorker.frames() ◀──streaming generator────────── stream(): event pipe ─▶ b"D" + raw bytes
       FrameReader.feed() → decode/validate                         sentinel ─▶ b"X" + exit JSON
    request_cancel/send_control ──actor methods──────▶  control pipe ({"op": "cancel"|"answer"})
    kill_tree ──actor.kill_tree, then ray.kill──────▶   SIGKILL of the worker's tree, then the actor

The actor never runs the workflow in its own process (``worker_main`` calls ``setsid``, rewires
fds 1/2 and clears the environment): it starts isolane's worker as a child with the same
:class:`~isolane.executor.supervisor.Supervisor` the local backend uses, and relays the event
pipe's bytes untouched. Items of the stream are ``bytes`` only; the parent splits and validates
frames exactly as for a local worker and never unpickles anything a worker produced.

Failure mapping: a lost actor or node raises at the generator (``RayActorError``,
``ActorDiedError``, ``NodeDiedError``); the run is then ``crashed`` with the node named. A hung
node never fails its stream: isolane's heartbeat watchdog catches it, then ``ray.kill``.
Ray's own retries are off: isolane's resume is the retry (a retry would re-run LLM calls).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import anyio
import anyio.to_thread
import orjson
import ray
import ray.exceptions

from isolane.errors import ConfigError
from isolane.executor.backend import WorkerExit
from isolane.executor.channel import FrameReader, ReadResult
from isolane.executor.supervisor import (
    DEFAULT_ENV_ALLOW,
    DEFAULT_PRELOAD,
    Supervisor,
    WorkerProcess,
    portable_spec,
)
from isolane.executor.worker import WorkerSpec

__all__ = ["ADDRESS_ENV", "RayBackend", "RayWorker"]

log = logging.getLogger(__name__)

#: The Ray cluster to join (``auto``: the one started on this machine with ``ray start``).
ADDRESS_ENV: Final = "ISOLANE_RAY_ADDRESS"

_DATA: Final = b"D"  # the rest of the item: raw bytes of the event pipe, in order
_EXIT: Final = b"X"  # the rest: {"exit_code": int | null}; the last item of a stream
_READ_CHUNK: Final = 1 << 20
#: At most this many bytes per stream item; the emitter already batches many events per frame.
_MAX_ITEM: Final = 4 << 20
#: Items in flight between the actor and the parent (Ray back-pressure on the generator).
_IN_FLIGHT: Final = 64


class _RunActor:
    """The Ray actor of one run: starts the worker on its node and relays its event pipe."""

    def __init__(self, start_method: str | None, env_allow: list[str], preload: list[str]) -> None:
        self._supervisor = Supervisor(start_method=start_method, env_allow=env_allow, preload=preload,
                                      sweep_cgroups=False)
        self._worker: WorkerProcess | None = None

    async def start(self, spec: WorkerSpec) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self._worker = await loop.run_in_executor(None, self._supervisor.spawn, spec)
        context = ray.get_runtime_context()
        return {"pid": self._worker.pid, "create_time": self._worker.create_time,
                "node_id": context.get_node_id(),
                "ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
                "host": socket.gethostname()}

    async def stream(self) -> AsyncIterator[bytes]:
        worker = self._worker
        if worker is None:
            raise RuntimeError("stream() before start()")
        loop = asyncio.get_running_loop()
        fd, sentinel = worker.event_fd, worker.sentinel
        os.set_blocking(fd, False)
        wake = asyncio.Event()
        exited = asyncio.Event()

        def on_exit() -> None:
            loop.remove_reader(sentinel)
            exited.set()
            wake.set()

        loop.add_reader(sentinel, on_exit)
        eof = False
        try:
            while True:
                if not exited.is_set():
                    wake.clear()
                    loop.add_reader(fd, wake.set)
                    try:
                        await wake.wait()
                    finally:
                        loop.remove_reader(fd)
                chunks: list[bytes] = []
                size = 0
                while size < _MAX_ITEM:
                    try:
                        chunk = os.read(fd, _READ_CHUNK)
                    except BlockingIOError:
                        break
                    if not chunk:
                        eof = True
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                if chunks:
                    yield _DATA + b"".join(chunks)
                if size >= _MAX_ITEM:
                    continue  # more is waiting: no need to wait for readiness
                if eof:
                    await exited.wait()
                    break
                if exited.is_set() and not chunks:
                    break
        finally:
            loop.remove_reader(sentinel)
        yield _EXIT + orjson.dumps({"exit_code": worker.exitcode()})

    async def cancel(self) -> None:
        if self._worker is not None:
            self._worker.request_cancel()

    async def send_control(self, message: dict[str, Any]) -> None:
        if self._worker is None:
            raise RuntimeError("no worker to send to")
        self._worker.control.send(message)

    async def kill_tree(self) -> int:
        return self._worker.kill_tree() if self._worker is not None else 0


@dataclass(frozen=True, slots=True)
class _Placement:
    pid: int
    create_time: float
    node_id: str
    ip: str
    host: str

    @property
    def location(self) -> str:
        return f"ray node {self.node_id} ({self.ip}, {self.host})"


class RayWorker:
    """A :class:`~isolane.executor.backend.WorkerHandle` on a worker relayed by a Ray actor."""

    def __init__(self, run_id: str, actor: Any, placement: _Placement, *,
                 kill_timeout: float) -> None:
        self._run_id = run_id
        self._actor = actor
        self._placement = placement
        self._kill_timeout = kill_timeout
        self._exit: WorkerExit | None = None
        self._exited = anyio.Event()
        self._stream_scope: anyio.CancelScope | None = None
        self._killed = False
        self._stream = actor.stream.options(
            num_returns="streaming", _generator_backpressure_num_objects=_IN_FLIGHT).remote()

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

    async def frames(self) -> AsyncIterator[ReadResult]:
        reader = FrameReader(None)
        try:
            with anyio.CancelScope() as scope:
                self._stream_scope = scope
                async for ref in self._stream:
                    item = await ref
                    if not isinstance(item, bytes) or not item:
                        raise TypeError(f"the relay sent a {type(item).__name__}, not bytes")
                    tag, body = item[:1], item[1:]
                    if tag == _DATA:
                        result = reader.feed(body)
                        if result.frames or result.problems:
                            yield result
                    elif tag == _EXIT:
                        code = orjson.loads(body).get("exit_code")
                        self._finish(WorkerExit(code if isinstance(code, int) else None))
                    else:
                        raise TypeError(f"the relay sent an item tagged {tag!r}")
        except (ray.exceptions.RayError, TypeError) as exc:
            self._finish(WorkerExit(None, await self._loss_cause(exc)))
        finally:
            self._stream_scope = None
        if self._exit is None:
            self._finish(WorkerExit(None, f"the Ray stream from {self.location} ended without "
                                          "the worker's exit status"))
        tail = reader.feed(b"", eof=True)
        if tail.problems:
            yield tail

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
            self._killed = True
            ray.kill(self._actor, no_restart=True)
        if not self._exited.is_set():
            with anyio.move_on_after(self._kill_timeout):
                await self._exited.wait()
            if not self._exited.is_set():  # a hung node: stop waiting for a stream that never ends
                self._finish(WorkerExit(None, f"killed through Ray; {self.location} did not confirm "
                                              f"within {self._kill_timeout:g} s (node hung?)"))
                if self._stream_scope is not None:
                    self._stream_scope.cancel()
        return killed

    async def aclose(self) -> None:
        if not self._killed:
            self._killed = True
            try:
                ray.kill(self._actor, no_restart=True)
            except ray.exceptions.RayError:
                pass


def _node_alive(node_id: str) -> bool | None:
    try:
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            if node.get("NodeID") == node_id:
                return bool(node.get("Alive"))
    except Exception:  # noqa: BLE001 - the GCS is unreachable: say nothing about the node
        return None
    return False


class RayBackend:
    """Workers on a Ray cluster: one async actor per run, isolane's worker as its child process.

    ``address`` (default ``ISOLANE_RAY_ADDRESS``; ``"auto"`` finds a local ``ray start``) names the
    cluster; without one a local cluster is started, and shut down by :meth:`close`. When Ray is
    already initialised in this process, that connection is used as it is.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, start_method: str | None = None,
                 env_allow: Iterable[str] = DEFAULT_ENV_ALLOW,
                 preload: Iterable[str] = DEFAULT_PRELOAD, num_cpus: float = 1.0,
                 launch_timeout: float = 120.0, kill_timeout: float = 10.0,
                 init_options: Mapping[str, Any] | None = None) -> None:
        if num_cpus < 0:
            raise ConfigError(f"num_cpus cannot be negative, got {num_cpus}")
        if launch_timeout <= 0 or kill_timeout <= 0:
            raise ConfigError("launch_timeout and kill_timeout must be positive seconds")
        self.address = address or os.environ.get(ADDRESS_ENV) or None
        self.start_method = start_method
        self.env_allow = sorted(env_allow)
        self.preload = list(preload)
        self.num_cpus = num_cpus
        self.launch_timeout = launch_timeout
        self.kill_timeout = kill_timeout
        self.init_options = dict(init_options or {})
        self._owns_ray = False
        self._actor_cls: Any = None

    def start(self) -> None:
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.WARNING, **self.init_options}
            if self.address:
                options["address"] = self.address
            try:
                ray.init(**options)
            except ConnectionError as exc:
                raise ConfigError(f"cannot reach the Ray cluster at {self.address!r} ({exc}); start "
                                  f"one with `ray start --head`, or unset {ADDRESS_ENV} for a "
                                  "local cluster") from exc
            self._owns_ray = True
            log.info("ray backend: %s", "joined " + self.address if self.address
                     else "started a local Ray cluster")
        if self._actor_cls is None:
            self._actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(_RunActor)

    async def launch(self, spec: WorkerSpec) -> RayWorker:
        if self._actor_cls is None:
            await anyio.to_thread.run_sync(self.start)
        spec = replace(portable_spec(spec), die_with_parent=True)
        actor = self._actor_cls.options(num_cpus=self.num_cpus, name=None).remote(
            self.start_method, self.env_allow, self.preload)
        try:
            with anyio.fail_after(self.launch_timeout):
                info = await actor.start.remote(spec)
        except TimeoutError:
            ray.kill(actor, no_restart=True)
            raise RuntimeError(
                f"no Ray node started the run's actor within {self.launch_timeout:g} s (it needs "
                f"{self.num_cpus:g} CPU); add nodes or lower RayBackend(num_cpus=...)") from None
        except ray.exceptions.RayError as exc:
            ray.kill(actor, no_restart=True)
            raise RuntimeError(f"the run's Ray actor could not start the worker: {exc}") from exc
        placement = _Placement(pid=int(info["pid"]), create_time=float(info["create_time"]),
                               node_id=str(info["node_id"]), ip=str(info["ip"]), host=str(info["host"]))
        return RayWorker(spec.run_id, actor, placement, kill_timeout=self.kill_timeout)

    def close(self) -> None:
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        self._actor_cls = None
