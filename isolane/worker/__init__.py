"""The worker: the child side of a run, one process per run or branch.

::

    backends (forkserver, Ray relay) ──▶ entry.worker_main(spec)     this package, and only it,
        emitter (events → spool and pipe) · context (what a workflow sees) · output (fds 1/2)
        files (work dir changes) · session (state snapshots) · human (asking a person)
        enforcement + proctree (limits, the run's process tree)

It imports :mod:`isolane.schemas` and :mod:`isolane.capture`, never the parent's modules: no
database, server or CLI is loaded in a worker process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "NodeEnd": "isolane.worker.context",
    "RunContext": "isolane.worker.context",
    "worker_main": "isolane.worker.entry",
    "Emitter": "isolane.worker.emitter",
    "EmitterClosed": "isolane.worker.emitter",
    "HumanChannel": "isolane.worker.human",
    "HumanInputTimeout": "isolane.worker.human",
    "HumanInputUnavailable": "isolane.worker.human",
})

if TYPE_CHECKING:
    from isolane.worker.context import NodeEnd, RunContext
    from isolane.worker.emitter import Emitter, EmitterClosed
    from isolane.worker.entry import worker_main
    from isolane.worker.human import (
        HumanChannel,
        HumanInputTimeout,
        HumanInputUnavailable,
    )

__all__ = [
    "Emitter",
    "EmitterClosed",
    "HumanChannel",
    "HumanInputTimeout",
    "HumanInputUnavailable",
    "NodeEnd",
    "RunContext",
    "worker_main",
]
