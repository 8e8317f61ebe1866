"""The Ray worker backend, parent side: one detached async Ray actor per run relays its worker.

::

    parent (Executor, RunMonitor)                     Ray node (any)
    ────────────────────────────────                  ───────────────────────────────────────────
    RayBackend.launch(spec)                           RunRelay (isolane.backends.ray.relay;
      a warm relay from the pool, or a new one          detached, named isolane-relay-<hex>,
      probe: shared filesystem? (token file)            max_restarts=0, max_task_retries=0)
      start(spec, shared, workspace) ─────────────▶     Launcher.spawn ─▶ worker_main (its child)
    RayWorker.records() (ray.handle) ◀── generator ─  L spool bytes · B blobs · X exit
      LineSplitter / decode_lines / blob hash check
    request_cancel · send_control ── actor calls ───▶  control pipe ({"op": "cancel"|"answer"})
    kill_tree ── relay.kill_tree, release, ray.kill ▶  SIGKILL of the worker's tree, then the relay
    RayBackend.attach(meta, since_seq)  (a new parent after a crash: recovery)
      ray.get_actor(name) ── stream(since_seq) ────▶  the spool's records after since_seq, then live

The relay never runs the workflow in its own process (``worker_main`` calls ``setsid``, rewires
fds 1/2 and clears the environment): it starts isolane's worker as a child with the same
:class:`~isolane.backends.local.launcher.Launcher` the local backend uses. Items of the stream are
``bytes`` only; the parent splits and validates records exactly as for a local worker, checks each
shipped blob against its hash, and never interprets anything else a worker produced.

Failure mapping: a lost actor or node raises at the generator (``RayActorError``,
``ActorDiedError``, ``NodeDiedError``); the run is then ``crashed`` with the node named. A hung
node never fails its stream: isolane's heartbeat watchdog catches it, then ``ray.kill``.
Ray's own retries are off: isolane's resume is the retry (a retry would re-run LLM calls).
The relays are detached, so a parent's crash leaves its runs running; the run's ``meta.worker``
names its relay, and a new parent's recovery re-attaches (:meth:`RayBackend.attach`).
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import ray
import ray.exceptions

from isolane import settings
from isolane.backends.environment import DEFAULT_ENV_ALLOW
from isolane.backends.local.launcher import (
    DEFAULT_PRELOAD,
    portable_spec,
)
from isolane.backends.ray.handle import Placement, RayWorker
from isolane.backends.ray.relay import TOKEN_FILE, RunRelay
from isolane.errors import BlobError, ConfigError
from isolane.schemas.blobs import BlobStore
from isolane.schemas.spec import FILES_RESUME_KEY, WorkerSpec

__all__ = ["ADDRESS_ENV", "RayBackend", "RayWorker"]

log = logging.getLogger(__name__)

#: The Ray cluster to join (``auto``: the one started on this machine with ``ray start``).
ADDRESS_ENV: Final = settings.RAY_ADDRESS_ENV

#: Namespace of the relay actors' names (``isolane-relay-<hex>``), so a new parent finds them.
NAMESPACE: Final = "isolane"
#: How many warm relays to keep ready (``ISOLANE_RAY_POOL``; default 0).
POOL_ENV: Final = settings.RAY_POOL_ENV
#: Where a worker's files live: the parent's paths (a shared filesystem), or the node's own
#: directory with contents shipped through Ray; ``auto`` checks per run (see isolane.backends.ray.relay).
FILE_MODES: Final[Mapping[str, bool | None]] = {"auto": None, "shared": True, "ship": False}


@dataclass(slots=True)
class _Warm:
    """A relay of the pool: created, warming (its forkserver preloading), not yet claimed."""

    actor: Any
    name: str
    ready: Any  # the ObjectRef of its warm() call
    created: float


class RayBackend:
    """Workers on a Ray cluster: one detached async relay actor per run, isolane's worker its child.

    ``address`` (default ``ISOLANE_RAY_ADDRESS``; ``"auto"`` finds a local ``ray start``) names the
    cluster; without one a local cluster is started, and shut down by :meth:`close`. When Ray is
    already initialised in this process, that connection is used as it is.

    ``files`` is one of :data:`FILE_MODES`. ``pool_size`` relays (default ``ISOLANE_RAY_POOL`` or
    0) are kept warm, so a run starts without waiting for an actor and its preload; an unclaimed
    one exits after ``idle_timeout`` seconds. A relay whose parent died keeps its run going and
    waits ``orphan_grace`` seconds after the run's end for a new parent to collect it.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, start_method: str | None = None,
                 env_allow: Iterable[str] = DEFAULT_ENV_ALLOW,
                 preload: Iterable[str] = DEFAULT_PRELOAD, num_cpus: float = 1.0,
                 launch_timeout: float = 120.0, kill_timeout: float = 10.0,
                 files: str = "auto", pool_size: int | None = None,
                 idle_timeout: float = 600.0, orphan_grace: float = 86_400.0,
                 init_options: Mapping[str, Any] | None = None) -> None:
        if num_cpus < 0:
            raise ConfigError(f"num_cpus cannot be negative, got {num_cpus}")
        if launch_timeout <= 0 or kill_timeout <= 0 or idle_timeout <= 0 or orphan_grace <= 0:
            raise ConfigError("launch_timeout, kill_timeout, idle_timeout and orphan_grace must be "
                              "positive seconds")
        if files not in FILE_MODES:
            raise ConfigError(f"files={files!r} is not a file mode; use one of "
                              f"{', '.join(FILE_MODES)}")
        if pool_size is None:
            pool_size = settings.ray_pool()
        if pool_size < 0:
            raise ConfigError(f"pool_size cannot be negative, got {pool_size}")
        self.address = address or settings.ray_address()
        self.start_method = start_method
        self.env_allow = sorted(env_allow)
        self.preload = list(preload)
        self.num_cpus = num_cpus
        self.launch_timeout = launch_timeout
        self.kill_timeout = kill_timeout
        self.files = files
        self.pool_size = pool_size
        self.idle_timeout = idle_timeout
        self.orphan_grace = orphan_grace
        self.init_options = dict(init_options or {})
        self._owns_ray = False
        self._actor_cls: Any = None
        self._pool: list[_Warm] = []

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
            # Detached: a parent's crash must not end its runs (a new parent re-attaches).
            # No engine retries: isolane's resume is the retry (a Ray retry re-runs LLM calls).
            self._actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(RunRelay)
        self._refill()

    def _new_relay(self) -> tuple[Any, str]:
        name = f"isolane-relay-{uuid.uuid4().hex}"
        actor = self._actor_cls.options(
            name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=self.num_cpus,
        ).remote(self.start_method, self.env_allow, self.preload,
                 orphan_grace=self.orphan_grace, idle_timeout=self.idle_timeout)
        return actor, name

    def _refill(self) -> None:
        while len(self._pool) < self.pool_size:
            actor, name = self._new_relay()
            self._pool.append(_Warm(actor, name, actor.warm.remote(), time.monotonic()))

    async def _claim(self) -> tuple[Any, str]:
        """A warm relay from the pool when one is ready in time, else a new one."""
        while self._pool:
            warm = self._pool.pop(0)
            self._refill()
            if time.monotonic() - warm.created > 0.8 * self.idle_timeout:
                ray.kill(warm.actor, no_restart=True)  # about to expire by itself
                continue
            try:
                with anyio.fail_after(self.launch_timeout):
                    await warm.ready
            except (TimeoutError, ray.exceptions.RayError) as exc:
                log.warning("a pooled Ray relay was not usable (%s); starting another", exc)
                ray.kill(warm.actor, no_restart=True)
                continue
            return warm.actor, warm.name
        return self._new_relay()

    async def launch(self, spec: WorkerSpec) -> RayWorker:
        if self._actor_cls is None:
            await anyio.to_thread.run_sync(self.start)
        spec = replace(portable_spec(spec), die_with_parent=True)
        actor, name = await self._claim()
        try:
            with anyio.fail_after(self.launch_timeout):
                shared = await self._shared(actor, spec)
                workspace = None if shared else await anyio.to_thread.run_sync(_workspace_of, spec)
                info = await actor.start.remote(spec, shared, workspace)
        except TimeoutError:
            ray.kill(actor, no_restart=True)
            raise RuntimeError(
                f"no Ray node started the run's actor within {self.launch_timeout:g} s (it needs "
                f"{self.num_cpus:g} CPU); add nodes or lower RayBackend(num_cpus=...)") from None
        except ray.exceptions.RayError as exc:
            ray.kill(actor, no_restart=True)
            raise RuntimeError(f"the run's Ray actor could not start the worker: {exc}") from exc
        return RayWorker(spec.run_id, actor, Placement.of(info), kill_timeout=self.kill_timeout,
                         reattach={"backend": self.name, "actor": name, "namespace": NAMESPACE},
                         blob_dir=spec.blob_dir)

    async def _shared(self, actor: Any, spec: WorkerSpec) -> bool:
        """Whether the relay's node sees the parent's run directory (see :data:`FILE_MODES`)."""
        fixed = FILE_MODES[self.files]
        if fixed is not None:
            return fixed
        run_dir = Path(spec.spool_path).parent
        token = secrets.token_hex(16)
        await anyio.to_thread.run_sync((run_dir / TOKEN_FILE).write_text, token)
        return bool(await actor.probe.remote(str(run_dir), token))

    async def attach(self, run_id: str, reattach: Mapping[str, Any], *, since_seq: int,
                     blob_dir: str | None) -> RayWorker | None:
        """Re-attach to the relay of a run whose parent died; None when it is gone."""
        if self._actor_cls is None:
            await anyio.to_thread.run_sync(self.start)
        try:
            actor = ray.get_actor(str(reattach["actor"]),
                                  namespace=str(reattach.get("namespace", NAMESPACE)))
        except (ValueError, KeyError):
            return None
        try:
            with anyio.fail_after(self.launch_timeout):
                info = await actor.placement.remote()
        except (TimeoutError, ray.exceptions.RayError) as exc:
            log.info("run %s: its relay %s does not answer (%s)", run_id, reattach.get("actor"), exc)
            return None
        return RayWorker(run_id, actor, Placement.of(info), kill_timeout=self.kill_timeout,
                         reattach=reattach, since_seq=since_seq, blob_dir=blob_dir)

    def close(self) -> None:
        for warm in self._pool:
            try:
                ray.kill(warm.actor, no_restart=True)
            except ray.exceptions.RayError:
                pass
        self._pool.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        self._actor_cls = None


def _workspace_of(spec: WorkerSpec) -> dict[str, Any] | None:
    """The files a worker on another node starts with: its resume state's, from the blob store."""
    baseline: Mapping[str, Mapping[str, Any]] = (spec.resume or {}).get(FILES_RESUME_KEY) or {}
    if not baseline or spec.blob_dir is None:
        return None
    store = BlobStore(spec.blob_dir)
    files: dict[str, str] = {}
    blobs: dict[str, bytes] = {}
    for path, entry in baseline.items():
        sha256 = str(entry.get("sha256") or "")
        if entry.get("deleted") or not sha256:
            continue
        if sha256 not in blobs:
            try:
                blobs[sha256] = store.read(sha256)
            except BlobError as exc:
                log.warning("run %s: %s is not shipped to its node: %s", spec.run_id, path, exc)
                continue
        files[path] = sha256
    return {"files": files, "blobs": blobs}
