"""The frozen values :class:`~isolane.tracking.Store` returns, one per table it reads.

Field names are the column names, so a row is built straight from a result mapping and a new
column only adds a field (with a default when callers may construct the row themselves).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final

__all__ = [
    "EXCERPT_LIMIT",
    "RUN_STATUSES",
    "DagEdgeRow",
    "DagNodeRow",
    "DiagnosticRow",
    "FileRow",
    "LlmCallRow",
    "RunRow",
]

#: Every status a run can have. ``won``/``lost`` are the outcomes of a racer.
RUN_STATUSES: Final = frozenset(
    {"queued", "starting", "running", "completed", "failed", "crashed", "timed_out", "cancelled",
     "won", "lost"})

#: Diagnostics keep at most this many characters of the offending input.
EXCERPT_LIMIT: Final = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    """One run as stored; times are float epoch seconds (UTC)."""

    id: str
    workflow: str
    task: str
    config: dict[str, Any]
    status: str
    created_at: float
    work_dir: str
    last_seq: int
    attempt: int
    meta: dict[str, Any]
    session_id: str | None = None
    parent_run_id: str | None = None
    branch_point_node: str | None = None
    phase: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    heartbeat_at: float | None = None
    worker_pid: int | None = None
    worker_create_time: float | None = None
    exit_code: int | None = None
    error: str | None = None
    error_type: str | None = None
    result: Any = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class DiagnosticRow:
    """A recorded problem: ``kind`` (``invalid_event``, ``store_outage``, ``seq_gap``, …), the
    ``reason`` in words and an ``excerpt`` of the input (cut to :data:`EXCERPT_LIMIT` characters
    when stored). ``id`` is ``None`` until the row is stored.
    """

    run_id: str | None
    ts: float
    kind: str
    reason: str
    excerpt: str = ""
    id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DagNodeRow:
    """A DAG node; ``position`` is the order in which nodes were added to the run."""

    run_id: str
    node_id: str
    label: str
    node_type: str
    parent_node_id: str | None
    depth: int
    status: str
    error: str | None
    started_at: float | None
    ended_at: float | None
    meta: dict[str, Any]
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DagEdgeRow:
    """A directed DAG edge of ``kind`` (``next`` unless the workflow says otherwise)."""

    run_id: str
    source: str
    target: str
    kind: str
    condition: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmCallRow:
    """One LLM call; ``cost`` is ``None`` when the model has no configured price."""

    run_id: str
    seq: int
    node_id: str | None
    agent: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float | None
    cost_source: str
    duration_s: float
    cached: bool
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRow:
    """One version of a workspace file; ``kind`` is ``created``, ``modified`` or ``deleted``
    (a deletion has ``sha256 == ""`` and ``size == 0``)."""

    run_id: str
    seq: int
    path: str
    sha256: str
    size: int
    version: int
    node_id: str | None
    phase: str | None
    agent: str | None
    kind: str
    ts: float


def columns_of(row_type: type[Any]) -> tuple[str, ...]:
    """The field names of a row type, i.e. the columns to select for it (used by the store)."""
    return tuple(f.name for f in fields(row_type))

