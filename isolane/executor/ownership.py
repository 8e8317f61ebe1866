"""Which isolane process owns a run, and whether that owner is alive, on this host or another.

Several parents may share one database (web workers on several machines, one PostgreSQL). Each
run's ``meta`` names its owner: ``parent_pid``, ``parent_create_time`` and ``parent_host``.

- On the owner's own host, the pid and its create time answer exactly (a recycled pid has
  another create time).
- From another host a pid means nothing; the run's ``heartbeat_at`` answers instead. A live
  owner stamps it at least every :data:`LIVENESS_INTERVAL` seconds (its monitor as frames
  arrive, its executor for queued runs), so an owner silent for :data:`STALE_AFTER` is gone.

``parent_host`` is ``$ISOLANE_HOST_ID`` when set (give each container or pod its own), else the
host name and the kernel's boot id. Runs stored before hosts were recorded count as local.
"""

from __future__ import annotations

import os
import socket
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import psutil

from isolane import settings
from isolane.errors import RunStateError
from isolane.executor.run import RESUMABLE_STATUSES
from isolane.executor.writer import WriteItem
from isolane.tracking.rows import RunRow
from isolane.tracking.store import UNFINISHED_STATUSES

if TYPE_CHECKING:
    from isolane.executor.live import LiveRuns
from isolane.worker.proctree import process_alive

__all__ = ["HOST_ENV", "LIVENESS_INTERVAL", "STALE_AFTER", "check_resumable", "host_id", "owner_alive",
           "owner_stamp", "stamp_liveness"]

#: Names this host (a container, a pod) when the host name and boot id do not tell them apart.
HOST_ENV: Final = settings.HOST_ID_ENV
#: A live executor stamps ``heartbeat_at`` of each of its unfinished runs at least this often.
LIVENESS_INTERVAL: Final = 20.0
#: A run owned on another host whose ``heartbeat_at`` is older than this has lost its owner.
STALE_AFTER: Final = 120.0

_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


@cache
def host_id() -> str:
    """This host's identity, as stored in ``meta.parent_host``."""
    configured = settings.host_id()
    if configured:
        return configured
    try:
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        boot = str(int(psutil.boot_time()))
    return f"{socket.gethostname()}/{boot}"


def owner_stamp() -> dict[str, Any]:
    """The ``meta`` keys that make this process a run's owner."""
    return {"parent_pid": os.getpid(), "parent_create_time": psutil.Process().create_time(),
            "parent_host": host_id()}


def owner_alive(row: RunRow, *, now: float | None = None, stale_after: float = STALE_AFTER) -> bool:
    """Whether another live isolane process owns ``row`` (this process never counts)."""
    meta = row.meta
    host = meta.get("parent_host")
    if host is None or host == host_id():
        if meta.get("parent_pid") == os.getpid():
            return False  # a previous executor of this very process: nobody watches it any more
        return process_alive(meta.get("parent_pid"), meta.get("parent_create_time"))
    seen = max(t for t in (row.heartbeat_at, row.started_at, row.created_at) if t is not None)
    return (now if now is not None else time.time()) - seen < stale_after


async def stamp_liveness(runs: LiveRuns, scope: anyio.CancelScope) -> None:
    """Stamp ``heartbeat_at`` of every run ``runs`` holds, every :data:`LIVENESS_INTERVAL`, so
    that parents on other hosts sharing the database see their owner alive (until ``scope`` is
    cancelled)."""
    with scope:
        while True:
            await anyio.sleep(LIVENESS_INTERVAL)
            now = time.time()
            owned = [live.run_id for live in runs.active()]
            if owned:
                await runs.writer.put(WriteItem(
                    run_updates={run_id: {"heartbeat_at": now} for run_id in owned}))


def check_resumable(row: RunRow) -> None:
    """Raise :class:`RunStateError` unless ``row`` may be resumed by this process: it ended
    without success (:data:`~isolane.executor.run.RESUMABLE_STATUSES`), or it is unfinished and
    no live isolane process owns it (blocking)."""
    if row.status in RESUMABLE_STATUSES:
        return
    if row.status not in UNFINISHED_STATUSES:
        raise RunStateError(
            f"run {row.id} is {row.status}; only crashed, failed, timed_out, cancelled or "
            "interrupted runs can be resumed (branch it to run again from a node)")
    if owner_alive(row):
        raise RunStateError(
            f"run {row.id} is {row.status} under another live isolane process "
            f"(pid {row.meta.get('parent_pid')} on {row.meta.get('parent_host', 'this host')});"
            " cancel it there, or run `isolane recover` if that process is stuck")
