"""Enforcing a run's :class:`~isolane.schemas.limits.Limits` in the worker (:class:`LimitEnforcer`);
the parent names the limit when the kernel ended a worker with
:func:`~isolane.schemas.limits.limit_crash` and :func:`~isolane.schemas.limits.crash_hint`.

::

    parent                                              worker (before any workflow code runs)
    ──────                                              ──────────────────────────────────────
    RunSpec(limits=Limits(...))                         LimitEnforcer.apply()
      └─ Launcher.spawn: ProcessCgroup.create()         join the run's pids cgroup (if any)
           pids.max = processes + task allowance          setrlimit DATA (memory), CPU (soft:
           (only where cgroups are writable)                SIGXCPU, hard: SIGKILL), NOFILE
                                                        LimitEnforcer.start()   watcher thread, every 100 ms
                                                          processes in the tree  > processes → breach
                                                          anonymous RSS of tree  > memory    → breach
                                                          CPU of tree (+reaped)  > cpu       → breach
                                                          forks the cgroup refused           → breach
                                                        OutputPump ─ take_output(n) ── past output_mb → breach
                                                        breach: kill every descendant, SIGXCPU to itself
                                                          → _LimitBreach raised in the workflow's thread
                                                          → run_failed {error_type: "LimitExceeded", limit}
    RunMonitor (parent): limit_crash()/crash_hint() name the limit when the kernel ended the worker
    (SIGXCPU past the soft CPU limit; SIGKILL at the hard one)

RLIMIT_NPROC is not used: it counts every process of the *user* (all runs, the parent, the user's
shell), and root ignores it. Processes are counted per run instead, by walking the worker's
descendants (the worker is a child subreaper, so detached ones stay in its tree); a pids cgroup,
where one can be created, adds a kernel-enforced backstop that a fork bomb cannot outrun. Both
live in :mod:`isolane.worker.proctree`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from isolane.schemas.limits import CPU_GRACE, Limits
from isolane.worker.cgroup import ProcessCgroup
from isolane.worker.proctree import descendants, kill_until_gone, tree_usage

if TYPE_CHECKING:
    from isolane.worker.emitter import Emitter

__all__ = ["Breach", "LimitEnforcer"]

log = logging.getLogger(__name__)

_MIB: Final = 1024 * 1024
#: Extra memory above ``memory_mb`` (RLIMIT_DATA hard limit) so the worker can report the breach.
_MEMORY_HEADROOM: Final = 64 * _MIB
#: Extra descriptors above ``open_files`` (RLIMIT_NOFILE hard limit), released when the limit is
#: reached so the worker can finish its bookkeeping and report the breach with the workflow's
#: descriptors still open.
_FILES_HEADROOM: Final = 32
_WATCH_INTERVAL: Final = 0.1
_STUCK_GRACE: Final = 5.0


@dataclass(frozen=True, slots=True)
class Breach:
    """One limit a run passed: which (``memory``, ``cpu``, ``open_files``, ``processes``,
    ``output``, ``spool``) and the message that names it."""

    limit: str
    message: str


_RAISE_HINT: Final = {
    "memory": "memory_mb", "cpu": "cpu_seconds", "open_files": "open_files",
    "processes": "processes", "output": "output_mb", "spool": "spool_mb",
}


def _payload(breach: Breach, tb: str) -> dict[str, Any]:
    option = _RAISE_HINT[breach.limit]
    return {
        "error": f"LimitExceeded: {breach.message}; if the run needs more, raise it with "
                 f"RunSpec(limits=Limits({option}=...))",
        "error_type": "LimitExceeded",
        "limit": breach.limit,
        "traceback": tb,
    }


class _LimitBreach(BaseException):
    """Raised in the workflow's thread when its run passed a limit (not catchable as Exception)."""

    def __init__(self, breach: Breach) -> None:
        self.breach = breach
        super().__init__(breach.message)


# -- the worker's side ---------------------------------------------------------------------------


class LimitEnforcer:
    """Applies a run's :class:`Limits` inside its worker and turns a breach into the run's end.

    Call :meth:`apply` before any workflow code runs, :meth:`start` once the emitter exists,
    run the workflow inside :meth:`armed`, build the failure with :meth:`failure`, and
    :meth:`stop` at the end. With ``limits=None`` every method is a cheap no-op.
    """

    def __init__(self, limits: Limits | None, *, cgroup: str | None = None,
                 interval: float = _WATCH_INTERVAL, stuck_grace: float = _STUCK_GRACE) -> None:
        self.limits = limits
        self._cgroup = ProcessCgroup(Path(cgroup)) if cgroup else None
        self._interval = interval
        self._stuck_grace = stuck_grace
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._breach: Breach | None = None
        self._breach_at = 0.0
        self._raised = False
        self._armed = False
        self._output_left = int(limits.output_mb * _MIB) if limits and limits.output_mb else None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._emitter: Emitter | None = None
        self._exit_code = 1

    @property
    def breach(self) -> Breach | None:
        """The first limit the run passed, if any."""
        return self._breach

    def apply(self) -> None:
        """Join the run's cgroup and set the rlimits (in the worker, before the workflow)."""
        self._pid = os.getpid()
        if self._cgroup is not None and not self._cgroup.join(self._pid):
            self._cgroup = None
        limits = self.limits
        if limits is None:
            return
        if limits.memory_mb:
            soft = limits.memory_mb * _MIB
            _set_rlimit(resource.RLIMIT_DATA, soft, soft + _MEMORY_HEADROOM)
        if limits.cpu_seconds:
            soft = math.ceil(limits.cpu_seconds)
            _set_rlimit(resource.RLIMIT_CPU, soft, soft + CPU_GRACE)
        if limits.open_files:
            _set_rlimit(resource.RLIMIT_NOFILE, limits.open_files,
                        limits.open_files + _FILES_HEADROOM)
        signal.signal(signal.SIGXCPU, self._on_limit_signal)

    def start(self, emitter: Emitter, *, exit_code: int = 1) -> None:
        """Start the watcher thread (tree size, memory, CPU); it reports through ``emitter``."""
        self._emitter = emitter
        self._exit_code = exit_code
        limits = self.limits
        if limits is None or not (limits.processes or limits.memory_mb or limits.cpu_seconds):
            return
        if not sys.platform.startswith("linux"):
            log.info("process-tree limits are watched on Linux only; rlimits still apply")
            return
        self._thread = threading.Thread(target=self._watch, name="isolane-limits", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """While the workflow runs, a breach raises in its thread; outside, it is only recorded."""
        self._armed = True
        try:
            if self._breach is not None and not self._raised:
                self._raised = True
                raise _LimitBreach(self._breach)
            yield
        finally:
            self._armed = False

    def take_output(self, n: int) -> int:
        """Account ``n`` bytes of stdout/stderr; return how many of them may still be kept."""
        if self._output_left is None:
            return n
        with self._lock:
            allowed = min(n, max(self._output_left, 0))
            self._output_left -= n
            over = self._output_left < 0
        if over:
            assert self.limits is not None and self.limits.output_mb is not None
            self.trip(Breach("output", f"output limit of {self.limits.output_mb:g} MB reached "
                                       "(stdout and stderr together); later output was dropped"))
        return allowed

    @property
    def spool_bytes(self) -> int | None:
        """The size the run's spool may reach (None: unbounded)."""
        limits = self.limits
        return int(limits.spool_mb * _MIB) if limits is not None and limits.spool_mb else None

    def spool_full(self, size: int) -> None:
        """The emitter's report that the spool passed :attr:`spool_bytes`: stop the run."""
        assert self.limits is not None and self.limits.spool_mb is not None
        self.trip(Breach("spool", f"event log limit of {self.limits.spool_mb:g} MB reached "
                                  f"({size} bytes of events)"))

    def trip(self, breach: Breach) -> None:
        """Record a breach (the first one wins), end the run's other processes, stop the workflow."""
        with self._lock:
            if self._breach is not None:
                return
            self._breach = breach
            self._breach_at = time.monotonic()
        log.warning("run passed a limit: %s", breach.message)
        killed = self._kill_descendants()
        if self._emitter is not None:
            with contextlib.suppress(Exception):
                self._emitter.emit("error", {"message": breach.message, "error_type": "LimitExceeded",
                                             "limit": breach.limit, "killed_processes": killed})
        if self._armed:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGXCPU)

    def failure(self, exc: BaseException) -> dict[str, Any] | None:
        """The ``run_failed`` payload when a limit explains ``exc`` (else ``None``)."""
        breach = exc.breach if isinstance(exc, _LimitBreach) else self._breach
        limits = self.limits
        if breach is None and limits is not None:
            if limits.memory_mb and _in_chain(exc, lambda e: isinstance(e, MemoryError)):
                breach = Breach("memory", f"memory limit of {limits.memory_mb} MB reached "
                                          "(an allocation failed: MemoryError)")
            elif limits.open_files and _in_chain(exc, lambda e: isinstance(e, OSError)
                                                 and e.errno in (errno.EMFILE, errno.ENFILE)):
                breach = Breach("open_files", f"open files limit of {limits.open_files} reached")
            elif limits.processes and self._cgroup is not None and self._cgroup.refused_forks():
                breach = Breach("processes", f"process limit of {limits.processes} reached "
                                             "(the kernel refused a fork)")
        if breach is None:
            return None
        if breach.limit == "memory":
            _lift_soft(resource.RLIMIT_DATA)  # headroom to format and send the report
        if breach.limit == "cpu":
            _lift_soft(resource.RLIMIT_CPU)  # no more SIGXCPU; SIGKILL stays at the hard limit
        if breach.limit == "open_files":
            _lift_soft(resource.RLIMIT_NOFILE)  # descriptors to save state, drain and report
        tb = "".join(traceback.format_exception(exc)) if not isinstance(exc, _LimitBreach) else ""
        with contextlib.suppress(AttributeError):
            traceback.clear_frames(exc.__traceback__)  # free what the failed code held
        with self._lock:
            self._breach = self._breach or breach
        return _payload(breach, tb)

    def stop(self) -> None:
        """Stop watching (the run is ending); the worker kills its descendants itself."""
        self._armed = False
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    # -- internals ----------------------------------------------------------------------------

    def _on_limit_signal(self, signum: int, frame: Any) -> None:
        if self._raised or not self._armed:
            if self._breach is None and self.limits is not None and self.limits.cpu_seconds:
                self._breach = Breach("cpu", f"CPU time limit of {self.limits.cpu_seconds:g} s reached")
            return
        self._raised = True
        breach = self._breach
        if breach is None:  # the kernel's SIGXCPU: the worker itself passed the soft CPU limit
            cpu = self.limits.cpu_seconds if self.limits else None
            breach = self._breach = Breach("cpu", f"CPU time limit of {cpu:g} s reached")
        raise _LimitBreach(breach)

    def _watch(self) -> None:
        limits = self.limits
        assert limits is not None
        while not self._stopped.wait(self._interval):
            if self._breach is not None:
                self._kill_descendants()  # a fork bomb keeps trying; keep ending it
                if self._armed and time.monotonic() - self._breach_at > self._stuck_grace:
                    self._give_up()
                continue
            try:
                usage = tree_usage(self._pid)
            except OSError:
                continue
            count, anon, cpu = usage
            if limits.processes and count > limits.processes:
                self.trip(Breach("processes", f"process limit of {limits.processes} reached "
                                              f"({count} processes in the run)"))
            elif (limits.processes and self._cgroup is not None
                  and self._cgroup.refused_forks()):
                self.trip(Breach("processes", f"process limit of {limits.processes} reached "
                                              "(the kernel refused a fork)"))
            elif limits.memory_mb and anon > limits.memory_mb * _MIB:
                self.trip(Breach("memory", f"memory limit of {limits.memory_mb} MB reached "
                                           f"(the run's processes held {anon // _MIB} MB)"))
            elif limits.cpu_seconds and cpu > limits.cpu_seconds:
                self.trip(Breach("cpu", f"CPU time limit of {limits.cpu_seconds:g} s reached "
                                        f"(the run's processes used {cpu:.1f} s)"))

    def _give_up(self) -> None:
        """The workflow ignored the breach: report it from here and end the worker."""
        breach = self._breach
        assert breach is not None
        log.error("the workflow did not stop within %.0f s of passing a limit; ending the worker",
                  self._stuck_grace)
        emitter = self._emitter
        if emitter is not None:
            with contextlib.suppress(Exception):
                emitter.emit("run_failed", _payload(breach, "(the workflow ignored the limit; "
                                                            "its worker was ended)"))
                emitter.close()
        self._kill_descendants()
        os._exit(self._exit_code)

    def _kill_descendants(self) -> int:
        """SIGKILL every process of the run but the worker, until none is left (bounded)."""
        def victims() -> set[int]:
            found = set(descendants(self._pid))
            if self._cgroup is not None:
                found.update(self._cgroup.pids())
            found.discard(self._pid)
            return found

        return kill_until_gone(victims)


def _set_rlimit(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not set resource limit %d to %d/%d: %s", which, soft, hard, exc)


def _lift_soft(which: int) -> None:
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(which)
        resource.setrlimit(which, (hard, hard))


def _in_chain(exc: BaseException, test: Callable[[BaseException], bool]) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 20:
        if test(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
