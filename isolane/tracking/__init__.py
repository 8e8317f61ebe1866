"""Persistence: the :class:`Store` over SQLite (embedded default) or PostgreSQL.

The schema is the models in :mod:`isolane.tracking.models`, created and evolved only by the
Alembic migrations shipped in ``isolane/tracking/migrations/`` (run by :meth:`Store.open`).
"""

from isolane.tracking.rows import (
    DagEdgeRow,
    DagNodeRow,
    DiagnosticRow,
    FileRow,
    LlmCallRow,
    RunRow,
)
from isolane.tracking.store import MIN_PREFIX, UNFINISHED_STATUSES, EventTuple, Store
from isolane.tracking.urls import ENV_URL, display_url, resolve_url

__all__ = [
    "ENV_URL",
    "MIN_PREFIX",
    "UNFINISHED_STATUSES",
    "DagEdgeRow",
    "DagNodeRow",
    "DiagnosticRow",
    "EventTuple",
    "FileRow",
    "LlmCallRow",
    "RunRow",
    "Store",
    "display_url",
    "resolve_url",
]
