"""A run's processes as the kernel sees them: its tree in ``/proc``, its pids cgroup.

::

    tree_usage(worker pid)  → (live processes, anonymous RSS, CPU seconds) of the worker and every
                              descendant, read from /proc (children of each thread, recursively)
    ProcessCgroup           → isolane-<run_id>.<owner pid> under the parent's pids cgroup (v1
                              ``pids``, or a v2 tree delegating ``pids``): pids.max as a kernel
                              backstop, and the list of every process of the run however it
                              detached
    TreeScan                → without a cgroup: the worker's descendants as its last scan found
                              them (every SCAN_INTERVAL, from a thread of the parent), so that
                              what a crashed worker left behind, re-parented to init, still dies

The limits watcher (:mod:`isolane.worker.enforcement`) and the launcher's ``kill_tree`` use these;
both are Linux-only and degrade to nothing elsewhere (no descendants, no cgroup).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import psutil

__all__ = ["CGROUP_TASK_ALLOWANCE", "SCAN_INTERVAL", "ProcessCgroup", "TreeScan", "descendants",
           "is_zombie", "kill_process_tree", "kill_until_gone", "process_alive",
           "remove_stale_cgroups", "tree_usage"]

log = logging.getLogger(__name__)

#: Threads count as tasks in a pids cgroup: the kernel cap is ``processes`` plus this many.
CGROUP_TASK_ALLOWANCE: Final = 256
_CGROUP_PREFIX: Final = "isolane-"
#: A cgroup is swept only once it is this old (and empty, and its owner is dead): a fresh one of
#: a live parent, empty until its worker joins, is never taken away from it.
_CGROUP_STALE_AGE: Final = 60.0
#: A cgroup named without its owner (an older isolane) is swept only past this age.
_CGROUP_UNOWNED_AGE: Final = 3600.0
#: How often a worker without a cgroup has its process tree scanned by the parent.
SCAN_INTERVAL: Final = 0.25

# -- one process, known by pid and create time -----------------------------------------------------


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """Whether ``pid`` still runs and is the same process (create time matches; zombies are gone)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        return bool(proc.create_time() == create_time) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_process_tree(pid: int, create_time: float | None) -> int:
    """SIGKILL a session-leader worker, its process group and every descendant; return how many.

    The root is frozen first so it cannot fork while its tree is walked. A pid whose create time
    no longer matches is not walked (it was reused); its group is still signalled.
    """
    killed = 0
    if process_alive(pid, create_time):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
        killed = kill_until_gone(lambda: [pid, *descendants(pid)])
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return killed


def kill_until_gone(find: Callable[[], Iterable[int]], *, rounds: int = 50) -> int:
    """SIGKILL every live process ``find()`` names, again until it names none (at most
    ``rounds`` times); return how many were signalled.

    The one kill loop of isolane (a run's tree, its cgroup, a worker's own descendants): each
    round freezes every victim first (a frozen process cannot fork), then kills them all, so a
    fork bomb cannot outrun it.
    """
    killed: set[int] = set()
    for _ in range(rounds):
        live = [pid for pid in find() if not is_zombie(pid)]
        if not live:
            break
        for pid in live:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        for pid in live:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
    return len(killed)


# -- reading the process tree from /proc -----------------------------------------------------------

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def descendants(root: int) -> list[int]:
    """Every descendant of ``root`` (children of each of its threads, recursively)."""
    found: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    kids = fh.read().split()
            except OSError:
                continue
            for kid in kids:
                child = int(kid)
                found.append(child)
                stack.append(child)
    return found


def _stat_fields(pid: int) -> list[bytes]:
    """``/proc/<pid>/stat`` after the command name: ``[state, ppid, …]``."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    return raw[raw.rindex(b")") + 2:].split()


def is_zombie(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] in (b"Z", b"X")
    except (OSError, ValueError, IndexError):
        return True


def tree_usage(root: int) -> tuple[int, int, float]:
    """(live processes, anonymous resident bytes, CPU seconds) of ``root`` and its descendants.

    CPU includes the children ``root`` already reaped (``cutime``/``cstime``).
    """
    count = 0
    anon = 0
    ticks = 0
    for pid in [root, *descendants(root)]:
        try:
            fields = _stat_fields(pid)
            if fields[0] in (b"Z", b"X"):
                continue
            with open(f"/proc/{pid}/statm", "rb") as fh:
                statm = fh.read().split()
        except (OSError, ValueError, IndexError):
            continue
        count += 1
        anon += max(int(statm[1]) - int(statm[2]), 0) * _PAGE
        # utime, stime are fields 14 and 15 of stat (11, 12 here); cutime, cstime 13, 14.
        ticks += int(fields[11]) + int(fields[12])
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])
    return count, anon, ticks / _CLK_TCK


# -- a pids cgroup per run --------------------------------------------------------


class ProcessCgroup:
    """A pids cgroup holding one run's processes, where the machine lets us create one.

    It gives a kernel-enforced cap on the run's tasks (threads count, hence
    :data:`CGROUP_TASK_ALLOWANCE`) and the list of every process of the run, however it detached
    and whoever reaped its parent. The parent creates it, the worker joins it first thing, the
    parent kills what is left in it and removes it when the run ends.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, run_id: str, *, processes: int | None) -> ProcessCgroup | None:
        """A new cgroup for ``run_id``, or ``None`` where cgroups are absent or read-only."""
        base = _pids_cgroup_base()
        if base is None:
            return None
        # Named with its owner's pid: another parent's sweep leaves it alone while we live.
        path = base / f"{_CGROUP_PREFIX}{run_id}.{os.getpid()}"
        try:
            path.mkdir()
            cap = "max" if processes is None else str(processes + CGROUP_TASK_ALLOWANCE)
            (path / "pids.max").write_text(cap)
        except OSError as exc:
            log.debug("no pids cgroup for run %s (%s); processes are counted instead", run_id, exc)
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return cls(path)

    def join(self, pid: int) -> bool:
        """Move ``pid`` into the cgroup (its future children follow it)."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            log.warning("could not join the run's cgroup %s: %s", self.path, exc)
            return False
        return True

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def refused_forks(self) -> int:
        """How many forks the kernel refused because the cap was reached."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self) -> int:
        """SIGKILL every process still in the cgroup (frozen first, repeated until empty)."""
        return kill_until_gone(self.pids)

    def remove(self) -> bool:
        """Remove the (empty) cgroup; ``False`` if processes are still being reaped in it."""
        for attempt in range(5):
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if attempt == 0:
                    self.kill_all()
                time.sleep(0.001 * 2**attempt)  # zombies leave once their parent reaps them
        log.info("cgroup %s still holds processes; left for a later clean-up", self.path)
        return False


def _pids_cgroup_base() -> Path | None:
    """Where this process may create pids cgroups: cgroup v1 ``pids`` or a v2 tree delegating it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        memberships = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1_mount = v2_mount = None
    for line in mounts:
        parts = line.split()
        if len(parts) < 4:
            continue
        if parts[2] == "cgroup" and "pids" in parts[3].split(","):
            v1_mount = parts[1]
        elif parts[2] == "cgroup2" and v2_mount is None:
            v2_mount = parts[1]
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if v1_mount is not None and "pids" in controllers.split(","):
            return _writable(Path(v1_mount) / rel.lstrip("/"))
        if v1_mount is None and v2_mount is not None and hierarchy == "0":
            base = Path(v2_mount) / rel.lstrip("/")
            try:
                delegated = "pids" in (base / "cgroup.subtree_control").read_text().split()
            except OSError:
                return None
            return _writable(base) if delegated else None
    return None


def _writable(path: Path) -> Path | None:
    return path if path.is_dir() and os.access(path, os.W_OK) else None


def remove_stale_cgroups(base: Path | None = None) -> int:
    """Remove the run cgroups that are provably stale: empty, older than a minute, and made by
    a parent that is gone (its pid, in the name, no longer runs). A cgroup named without an
    owner (an older isolane) must be an hour old. Returns how many were removed."""
    base = base or _pids_cgroup_base()
    removed = 0
    if base is None:
        return 0
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            if entry.name.startswith(_CGROUP_PREFIX) and _stale(entry, now):
                with contextlib.suppress(OSError):
                    entry.rmdir()  # refused while processes remain: a live run keeps its cgroup
                    removed += 1
    return removed


def _stale(entry: Path, now: float) -> bool:
    try:
        age = now - entry.stat().st_mtime
    except OSError:
        return False
    _, dot, owner = entry.name.rpartition(".")
    if not dot or not owner.isdigit():
        return age > _CGROUP_UNOWNED_AGE
    if age <= _CGROUP_STALE_AGE:
        return False
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


# -- a worker's tree, remembered (where there is no cgroup) -----------------------------------------


class TreeScan:
    """The descendants of a worker as its last scan found them, by pid and create time.

    A worker is a child subreaper: while it lives, whatever its workflow started (detached,
    ``setsid``, double-forked) stays in its tree. When it dies without cleaning up (``os._exit``,
    SIGSEGV, SIGKILL) they are re-parented to init and out of any walk from the worker; with no
    cgroup listing them, this memory is how the parent still finds them. A thread scans every
    ``interval`` until the worker exits (woken by a pidfd, not a sleep); :meth:`kill` ends every
    remembered process that is still the same one, and whatever it started since.
    """

    def __init__(self, root: int, *, interval: float = SCAN_INTERVAL) -> None:
        self.root = root
        self.interval = interval
        self._known: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name=f"isolane-scan-{self.root}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def known(self) -> dict[int, float]:
        with self._lock:
            return dict(self._known)

    def scan(self) -> None:
        """Remember the worker's descendants now (and forget those that ended)."""
        previous = self.known()
        found: dict[int, float] = {}
        for pid in descendants(self.root):
            if pid in previous:
                found[pid] = previous[pid]
                continue
            with contextlib.suppress(psutil.Error):
                found[pid] = psutil.Process(pid).create_time()
        with self._lock:
            if is_zombie(self.root):  # it died during the walk: its tree may be half re-parented
                self._known.update(found)
            else:
                self._known = found

    def kill(self) -> int:
        """SIGKILL every remembered process still alive, and its descendants; return how many."""
        known = self.known()

        def find() -> list[int]:
            live = [pid for pid, created in known.items() if process_alive(pid, created)]
            return [p for pid in live for p in (pid, *descendants(pid))]

        return kill_until_gone(find) if known else 0

    def _watch(self) -> None:
        try:
            pidfd = os.pidfd_open(self.root)
        except (AttributeError, OSError):
            pidfd = -1
        poller = select.poll()
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        try:
            while not self._stop.is_set():
                self.scan()
                if pidfd >= 0:
                    if poller.poll(self.interval * 1000):
                        return  # the worker exited: what it left is now outside any walk
                elif self._stop.wait(self.interval) or is_zombie(self.root):
                    return
        finally:
            if pidfd >= 0:
                os.close(pidfd)
