"""The latest consistent state of a run, rebuilt from the store for a resume (or a branch).

The worker saves only what it alone knows, as ``state_snapshot`` deltas; everything else (which
nodes completed and with what result, the phase, the last ``seq``) is already in the event log
and its projections. :func:`resume_state` puts the two together in the shape the worker's
:class:`~isolane.worker.session.ResumeInfo` reads.

The parent keeps the result per run in ``session_states`` (:func:`current_state`): written
when a run's worker ends and whenever it is rebuilt, read back as long as no event came after
it. Folding happens once per attempt, not per snapshot, so saving stays O(new data) in the
worker and the parent never rewrites a growing state while a run is live.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from isolane.tracking.store import Store
from isolane.tracking.workspace import FILE_EVENT_TYPES, file_baseline

__all__ = ["current_state", "fold_snapshots", "resume_state"]

#: What a resume reads of a run's events: its snapshots and its file history.
_STATE_EVENT_TYPES: Final = ("state_snapshot", *FILE_EVENT_TYPES)


def fold_snapshots(snapshots: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """Fold ``(seq, state_snapshot payload)`` pairs, in seq order, into the latest state."""
    context: dict[str, Any] = {}
    logs: dict[str, list[Any]] = {}
    last = 0
    for seq, data in snapshots:
        context.update(data.get("context", {}))
        for key in data.get("removed", ()):
            context.pop(key, None)
        for key, items in data.get("logs", {}).items():
            logs.setdefault(key, []).extend(items)
        last = seq
    return {"context": context, "logs": logs, "snapshot_seq": last}


def resume_state(store: Store, run_id: str, *, upto_seq: int | None = None) -> dict[str, Any]:
    """The state a new worker of ``run_id`` starts from (events after ``upto_seq`` ignored).

    One pass over the run's events reads both its snapshots and its file events; the last
    ``seq`` is the run row's (``runs.last_seq``), not a count over its events.
    """
    row = store.get_run(run_id)
    nodes, _ = store.dag(row.id)
    events = store.events(row.id, types=_STATE_EVENT_TYPES)
    if upto_seq is not None:
        events = [e for e in events if e.seq <= upto_seq]
    folded = fold_snapshots((e.seq, e.data) for e in events if e.type == "state_snapshot")
    return {
        "completed": {n.node_id: n.meta.get("result") for n in nodes if n.status == "completed"},
        "nodes": {n.node_id: n.parent_node_id for n in nodes},
        "phase": row.phase,
        "last_seq": row.last_seq,
        # The files earlier workers reported: a new worker continues their versions.
        "files": file_baseline(e for e in events if e.type in FILE_EVENT_TYPES),
        **folded,
    }


def current_state(store: Store, run_id: str) -> dict[str, Any]:
    """The run's latest consistent state: the kept one while it is current (no event since),
    else rebuilt with :func:`resume_state` and kept."""
    row = store.get_run(run_id)
    kept = store.session_state(row.id)
    if kept is not None and kept[0] == row.last_seq:
        return kept[1]
    state = resume_state(store, row.id)
    store.put_session_state(row.id, state["last_seq"], state)
    return state
