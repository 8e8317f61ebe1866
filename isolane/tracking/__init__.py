"""Persistence: the :class:`Store` over SQLite (embedded default) or PostgreSQL, and what is derived
from its event log (projections, state for a resume, workspaces, branches, comparisons).

The schema is the models in :mod:`isolane.tracking.models`, created and evolved only by the
Alembic migrations shipped in ``isolane/tracking/migrations/`` (run by :meth:`Store.open`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from isolane._lazy import exports

__getattr__, __dir__ = exports(__name__, {
    "DagEdgeRow": "isolane.tracking.rows",
    "DagNodeRow": "isolane.tracking.rows",
    "DiagnosticRow": "isolane.tracking.rows",
    "FileRow": "isolane.tracking.rows",
    "LlmCallRow": "isolane.tracking.rows",
    "RunRow": "isolane.tracking.rows",
    "EventRow": "isolane.schemas.envelope",
    "MIN_PREFIX": "isolane.tracking.store",
    "UNFINISHED_STATUSES": "isolane.tracking.store",
    "Store": "isolane.tracking.store",
    "ENV_URL": "isolane.tracking.urls",
    "display_url": "isolane.tracking.urls",
    "resolve_url": "isolane.tracking.urls",
})

if TYPE_CHECKING:
    from isolane.schemas.envelope import EventRow
    from isolane.tracking.rows import (
        DagEdgeRow,
        DagNodeRow,
        DiagnosticRow,
        FileRow,
        LlmCallRow,
        RunRow,
    )
    from isolane.tracking.store import MIN_PREFIX, UNFINISHED_STATUSES, Store
    from isolane.tracking.urls import ENV_URL, display_url, resolve_url

__all__ = [
    "ENV_URL",
    "MIN_PREFIX",
    "UNFINISHED_STATUSES",
    "DagEdgeRow",
    "DagNodeRow",
    "DiagnosticRow",
    "EventRow",
    "FileRow",
    "LlmCallRow",
    "RunRow",
    "Store",
    "display_url",
    "resolve_url",
]
