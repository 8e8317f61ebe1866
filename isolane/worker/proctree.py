"""A run's processes as the kernel sees them: its tree in ``/proc``, its pids cgroup.

::

    tree_usage(worker pid)  → (live processes, anonymous RSS, CPU seconds) of the worker and every
                              descendant, read from /proc (children of each thread, recursively)
    ProcessCgroup           → (isolane.worker.cgroup) a pids cgroup per run: a kernel cap, and
                              every process of the run however it detached
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
import threading
from collections.abc import Callable, Iterable
from typing import Final

import psutil

__all__ = ["SCAN_INTERVAL", "TreeScan", "descendants", "is_zombie", "kill_process_tree",
           "kill_until_gone", "process_alive", "tree_usage"]

log = logging.getLogger(__name__)

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
