"""Launching worker processes from a preloaded forkserver, and ending them with all they started.

::

    Launcher.start()  → a multiprocess forkserver, started with a scrubbed environment and
                          ``autogen``, ``openai`` and the worker module preloaded (spawn where the
                          platform has no forkserver)
    Launcher.spawn()  → WorkerProcess: the process, the read end of its event pipe (raw fd:
                          doorbells), its spool open for reading and where this attempt's
                          records begin, the write end of its control pipe, its pid and create time
    WorkerProcess.kill_tree() → SIGKILL to the worker's process group and to every descendant

A worker is its own session and process group (it calls ``setsid``) and a child subreaper, so
``killpg`` plus a walk of its descendants reaches the code its agents started, detached or not.
Once the worker has died, what it started is re-parented out of that walk: the run's cgroup
lists it, and the :class:`TreeScan` the launcher keeps of the worker's tree remembers it from the
last scan (the only record where there is no cgroup).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import multiprocess
import multiprocess.connection
import psutil
from multiprocess import context as mp_context
from multiprocess import forkserver, popen_forkserver, spawn, util

from isolane.backends.environment import DEFAULT_ENV_ALLOW, worker_environment
from isolane.errors import ConfigError
from isolane.schemas.spec import WorkerSpec
from isolane.schemas.spool import SpoolError, find_tail, open_spool, writer_alive
from isolane.worker.cgroup import ProcessCgroup, remove_stale_cgroups
from isolane.worker.entry import worker_main
from isolane.worker.proctree import SCAN_INTERVAL, TreeScan, kill_process_tree, process_alive

__all__ = ["DEFAULT_PRELOAD", "Launcher", "WorkerProcess", "open_run_spool", "portable_spec"]

log = logging.getLogger(__name__)

#: Imported once by the forkserver, so a worker starts with them loaded. ``isolane.capture``
#: re-exports lazily: its session module is what a worker runs (with ``autogen.beta``, ~90 ms).
DEFAULT_PRELOAD: Final = ("autogen", "openai", "isolane.worker.entry", "isolane.capture.session",
                          "isolane.workflows")

_environ_lock = threading.Lock()
#: multiprocess reads a forkserver child's exit status from its sentinel once, in ``poll``; and
#: ``Process.start`` polls every earlier child (``_cleanup``). Two threads polling one child at
#: once race for the status: the loser reads EOF and records exit code 255 (seen: a completed
#: run marked crashed under load). Every start and every status read takes this lock.
_popen_lock = threading.Lock()

# What a worker must not inherit from the parent's start-up: re-running the parent's __main__
# (multiprocessing's spawn semantics) would execute a user's script or our CLI in every worker.
_PREPARATION_DROP: Final = ("init_main_from_path", "init_main_from_name")


class _ForkServerPopen(popen_forkserver.Popen):  # type: ignore[misc]
    """The forkserver launcher, minus the re-import of the parent's ``__main__``."""

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        for key in _PREPARATION_DROP:
            prep_data.pop(key, None)
        buf = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            mp_context.reduction.dump(prep_data, buf)
            mp_context.reduction.dump(process_obj, buf)
        finally:
            mp_context.set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # lets the child notice the parent's death, as upstream does
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


def _noop() -> None:
    """The target of :meth:`Launcher.warm`'s probe."""


class _ForkServerWorker(mp_context.ForkServerProcess):  # type: ignore[misc]
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _ForkServerPopen(process_obj)


@contextlib.contextmanager
def _scrubbed_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Swap ``os.environ`` for ``env`` while helper processes (forkserver) are launched."""
    with _environ_lock:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


@dataclass(slots=True)
class WorkerProcess:
    """One started worker as the parent sees it."""

    run_id: str
    process: Any
    event_fd: int
    control: Any
    pid: int
    create_time: float
    #: The run's spool, open for reading (the parent's own fd: a worker replacing the file later
    #: does not change what is read), and the offset where this attempt's records begin.
    spool_fd: int = -1
    spool_start: int = 0
    #: The run's pids cgroup, where one could be made: it holds every process of the run.
    cgroup: ProcessCgroup | None = None
    #: The worker's descendants as last scanned, to end them after its death (no cgroup, or a
    #: cgroup that lost them).
    scan: TreeScan | None = None

    @property
    def sentinel(self) -> int:
        return int(self.process.sentinel)

    def exitcode(self) -> int | None:
        """The exit code once the process has ended (negative: killed by that signal)."""
        with _popen_lock:
            self.process.join(0)
            code = self.process.exitcode
        return None if code is None else int(code)

    def request_cancel(self) -> None:
        """Ask the worker to stop cooperatively (control message, then SIGTERM to it alone)."""
        try:
            self.control.send({"op": "cancel"})
        except (OSError, ValueError):
            self.signal(signal.SIGTERM)

    def signal(self, sig: int) -> None:
        if process_alive(self.pid, self.create_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_tree(self) -> int:
        """SIGKILL the worker, its process group and every descendant; return how many."""
        killed = kill_process_tree(self.pid, self.create_time)
        # Whatever detached and was re-parented out of the tree when the worker died.
        if self.cgroup is not None:
            killed += self.cgroup.kill_all()
        if self.scan is not None:
            killed += self.scan.kill()
        return killed

    def close(self) -> None:
        if self.scan is not None:
            self.scan.stop()
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        if self.spool_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.spool_fd)
            self.spool_fd = -1
        with contextlib.suppress(OSError):
            self.control.close()
        with contextlib.suppress(ValueError, AttributeError):
            self.process.close()


def portable_spec(spec: WorkerSpec) -> WorkerSpec:
    """``spec`` with a callable workflow pickled by value (dill, with the globals it uses), so
    that the worker does not need to import the parent's ``__main__``."""
    if not callable(spec.workflow):
        return spec
    import dill

    return replace(spec, workflow=getattr(spec.workflow, "__qualname__", "callable"),
                   workflow_pickle=dill.dumps(spec.workflow, recurse=True))


class Launcher:
    """Starts workers from a preloaded forkserver (or spawn); :class:`WorkerProcess` ends them."""

    def __init__(
        self,
        *,
        start_method: str | None = None,
        preload: Iterable[str] = DEFAULT_PRELOAD,
        env_allow: Iterable[str] = DEFAULT_ENV_ALLOW,
        sweep_cgroups: bool = True,
    ) -> None:
        methods = multiprocess.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method not in methods:
            raise ConfigError(f"start method {start_method!r} is not available here; use one of {methods}")
        self.start_method = start_method
        self.preload = tuple(preload)
        self.env_allow = frozenset(env_allow)
        self._ctx = multiprocess.get_context(start_method)
        #: Remove provably stale run cgroups at start (empty, a minute old, their owner dead:
        #: :func:`remove_stale_cgroups`); another parent's fresh one is never taken.
        self.sweep_cgroups = sweep_cgroups
        self._started = False

    def start(self) -> None:
        """Start the forkserver (once); it inherits only the allow-listed environment."""
        if self._started:
            return
        with _scrubbed_environ(worker_environment(allow=self.env_allow)):
            if self.start_method == "forkserver":
                self._ctx.set_forkserver_preload(list(self.preload))
                forkserver.ensure_running()
            from multiprocess import resource_tracker

            resource_tracker.ensure_running()
        if self.sweep_cgroups:
            remove_stale_cgroups()
        self._started = True

    def warm(self) -> None:
        """Start the forkserver and wait until its preload has finished (blocking).

        The forkserver imports its preload before it forks anything, so one throw-away child
        proves the imports are done: the next :meth:`spawn` starts a worker in milliseconds.
        """
        self.start()
        if self.start_method != "forkserver":
            return
        probe = _ForkServerWorker(target=_noop, name="isolane-warmup", daemon=False)
        with _popen_lock:
            probe.start()
        probe.join()

    def spawn(self, spec: WorkerSpec) -> WorkerProcess:
        """Start one worker for ``spec`` (blocking; call it from a thread in async code)."""
        self.start()
        spool_fd, spool_start = open_run_spool(spec.spool_path)
        info = os.fstat(spool_fd)
        spec = replace(spec, spool_identity=(info.st_dev, info.st_ino))
        limits = spec.limits
        try:
            cgroup = ProcessCgroup.create(spec.run_id,
                                          processes=limits.processes if limits else None)
        except BaseException:
            os.close(spool_fd)
            raise
        if cgroup is not None:
            spec = replace(spec, cgroup=str(cgroup.path))
        spec = portable_spec(spec)
        read_fd, write_fd = os.pipe()
        event_conn = multiprocess.connection.Connection(write_fd, readable=False)
        control_recv, control_send = self._ctx.Pipe(duplex=False)
        process_cls = _ForkServerWorker if self.start_method == "forkserver" else self._ctx.Process
        process = process_cls(
            target=worker_main, args=(spec, event_conn, control_recv),
            name=f"isolane-worker-{spec.run_id}", daemon=False,
        )
        try:
            with _popen_lock:
                process.start()
        except BaseException:
            os.close(spool_fd)
            os.close(read_fd)
            event_conn.close()
            control_recv.close()
            control_send.close()
            if cgroup is not None:
                cgroup.remove()
            raise
        # The child has its own copies now; ours would keep the pipe open after it dies.
        event_conn.close()
        control_recv.close()
        pid = int(process.pid)
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.Error:
            create_time = 0.0
        # With a cgroup too, less often: a cgroup removed under the run (by an older isolane's
        # sweep) or one the worker could not join lists nothing.
        scan = TreeScan(pid, interval=SCAN_INTERVAL if cgroup is None else 4 * SCAN_INTERVAL)
        scan.start()
        return WorkerProcess(spec.run_id, process, read_fd, control_send, pid, create_time,
                             spool_fd=spool_fd, spool_start=spool_start, cgroup=cgroup, scan=scan)


def open_run_spool(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Open a run's spool for reading before its worker starts: ``(fd, where records begin)``.

    Creates it when new; refuses a link or a non-regular file (:func:`open_spool`) and a spool
    that a live worker still writes (two workers never write one spool).
    """
    fd = open_spool(path, create=True)
    try:
        if writer_alive(fd):
            raise SpoolError(f"a worker of this run is still alive and writing its spool {path}; "
                             "cancel it, or wait for it to end, before starting another")
        return fd, find_tail(fd)[0]
    except BaseException:
        os.close(fd)
        raise
