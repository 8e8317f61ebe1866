"""A pids cgroup per run: ``isolane-<run_id>.<owner pid>`` under the parent's pids cgroup (v1
``pids``, or a v2 tree delegating ``pids``).

::

    parent: ProcessCgroup.create(run) ─▶ worker joins it first thing ─▶ pids.max caps its tasks
    run ends: kill_all() (every process in it, however it detached) ─▶ remove()
    remove_stale_cgroups(): empty, old enough, and its owner dead (another live parent's fresh
                            cgroup is never swept)

Linux-only; where cgroups are absent or read-only, ``create`` gives ``None`` and the process tree
(:mod:`isolane.worker.proctree`) is all there is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Final

from isolane.worker.proctree import kill_until_gone

__all__ = ["CGROUP_TASK_ALLOWANCE", "ProcessCgroup", "remove_stale_cgroups"]

log = logging.getLogger(__name__)

#: Threads count as tasks in a pids cgroup: the kernel cap is ``processes`` plus this many.
CGROUP_TASK_ALLOWANCE: Final = 256
_CGROUP_PREFIX: Final = "isolane-"
#: A cgroup is swept only once it is this old (and empty, and its owner is dead): a fresh one of
#: a live parent, empty until its worker joins, is never taken away from it.
_CGROUP_STALE_AGE: Final = 60.0
#: A cgroup named without its owner (an older isolane) is swept only past this age.
_CGROUP_UNOWNED_AGE: Final = 3600.0


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
