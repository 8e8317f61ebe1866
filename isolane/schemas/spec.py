"""What the parent hands a worker, and what a worker hands back when it exits.

::

    parent ──WorkerSpec (pickled: parent → worker is the trusted direction)──▶ worker entry
    worker ──exit code (EXIT_CODES) after its terminal event──▶ parent (any other exit: a crash)

``WorkerSpec.resume`` is the state a resumed worker starts from: what
:func:`isolane.tracking.state.resume_state` builds, with the keys below for what the worker's
file tracker and human channel read back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from isolane.schemas.blobs import DEFAULT_MAX_BLOB_BYTES
from isolane.schemas.limits import Limits

__all__ = ["EXIT_CODES", "FILES_RESUME_KEY", "HUMAN_RESUME_KEY", "SPOOL_REFUSED_EXIT", "WorkerSpec"]

#: Exit codes a worker uses after reporting its outcome; any other exit is a crash.
EXIT_CODES: Final = {"completed": 0, "failed": 1, "cancelled": 2}
#: The exit of a worker that could not take its run's spool (another live worker of the run
#: holds its writer lock, or the file was replaced): it wrote nothing and ran nothing
#: (``EX_TEMPFAIL``). The run ends ``failed`` with a ``SpoolError``.
SPOOL_REFUSED_EXIT: Final = 75

#: Key of the resume state holding the files a worker starts with:
#: ``{path: {"version": int, "sha256": str, "size": int, "deleted": bool}}``.
FILES_RESUME_KEY: Final = "files"
#: Key of the resume state holding the human answers already in the log, by request id.
HUMAN_RESUME_KEY: Final = "human_answers"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs, sent parent → worker (pickled; this direction is trusted)."""

    run_id: str
    workflow: str | Callable[..., Any]
    task: str
    config: dict[str, Any]
    work_dir: str
    spool_path: str
    env: dict[str, str]
    attempt: int = 1
    start_seq: int = 0
    #: Seconds a burst of events gathers behind one doorbell (a lone event rings at once).
    flush_interval: float = 0.005
    #: ``(st_dev, st_ino)`` of the spool the parent opened: the worker refuses another file.
    spool_identity: tuple[int, int] | None = None
    heartbeat_interval: float = 5.0
    capture_output: bool = True
    sys_path: tuple[str, ...] = ()
    #: A callable workflow, pickled by value with the globals it uses (set by the launcher).
    workflow_pickle: bytes | None = None
    snapshot_interval: float | None = 30.0
    #: Set when resuming: completed nodes and results, folded state, phase, known DAG nodes.
    resume: dict[str, Any] | None = field(default=None)
    #: Seconds a human-input question waits by default (None: until answered).
    human_timeout: float | None = None
    #: Resource limits (None: none) and the pids cgroup the parent made for the run, if any.
    limits: Limits | None = None
    cgroup: str | None = None
    #: Secret values redacted from every event, besides API keys and bearer tokens.
    secrets: tuple[str, ...] = ()
    #: Where file contents go (``<home>/blobs``; None: hashes only) and the largest one stored.
    blob_dir: str | None = None
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    #: SIGKILL the worker when its parent process dies (set by remote backends, whose relay
    #: actor is the parent's stand-in: no orphan keeps writing a spool a resume also writes).
    die_with_parent: bool = False
