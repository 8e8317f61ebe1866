"""Runs side by side: status, duration, cost and tokens by model, node statuses, files.

Everything comes from the store, so any runs can be compared (a run and its branches, the racers
of a group, two unrelated runs). Files are compared by content hash against the first run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from isolane.errors import ConfigError
from isolane.tracking.store import Store

__all__ = ["Comparison", "RunSummary", "compare_runs", "summarize_run"]


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    name: str | None
    workflow: str
    status: str
    parent_run_id: str | None
    branch_point_node: str | None
    duration_s: float | None
    cost_usd: float
    unpriced_calls: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    by_model: dict[str, dict[str, Any]]
    nodes: dict[str, str]
    files: dict[str, str]


@dataclass(frozen=True, slots=True)
class Comparison:
    runs: list[RunSummary]
    node_ids: list[str]
    #: Per run (after the first): files ``added``, ``removed`` and ``changed`` against the first.
    file_diff: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": [asdict(r) for r in self.runs], "node_ids": self.node_ids,
                "file_diff": self.file_diff}


def summarize_run(store: Store, run_id: str) -> RunSummary:
    """One run's comparable facts (blocking)."""
    row = store.get_run(run_id)
    by_model: dict[str, dict[str, Any]] = {}
    cost = 0.0
    unpriced = 0
    calls = store.llm_calls(row.id)
    for call in calls:
        entry = by_model.setdefault(call.model, {"calls": 0, "prompt_tokens": 0,
                                                 "completion_tokens": 0, "cost_usd": 0.0,
                                                 "unpriced_calls": 0})
        entry["calls"] += 1
        entry["prompt_tokens"] += call.prompt_tokens
        entry["completion_tokens"] += call.completion_tokens
        if call.cost is None:
            entry["unpriced_calls"] += 1
            unpriced += 1
        else:
            entry["cost_usd"] += call.cost
            cost += call.cost
    nodes, _ = store.dag(row.id)
    files: dict[str, str] = {}
    for version in store.files(row.id):
        if version.kind == "deleted":
            files.pop(version.path, None)
        else:
            files[version.path] = version.sha256
    duration = (row.ended_at - row.started_at) if row.ended_at and row.started_at else None
    return RunSummary(
        run_id=row.id, name=row.name, workflow=row.workflow, status=row.status,
        parent_run_id=row.parent_run_id, branch_point_node=row.branch_point_node,
        duration_s=duration, cost_usd=round(cost, 10), unpriced_calls=unpriced, calls=len(calls),
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        completion_tokens=sum(c.completion_tokens for c in calls), by_model=by_model,
        nodes={n.node_id: n.status for n in nodes if n.node_type != "branch_point"}, files=files)


def compare_runs(store: Store, run_ids: Sequence[str]) -> Comparison:
    """Summaries of ``run_ids`` (at least two) with the union of their nodes and a file diff."""
    if len(run_ids) < 2:
        raise ConfigError("compare needs at least two runs")
    runs = [summarize_run(store, run_id) for run_id in run_ids]
    node_ids: list[str] = []
    for summary in runs:
        node_ids.extend(n for n in summary.nodes if n not in node_ids)
    base = runs[0].files
    diff = {}
    for summary in runs[1:]:
        diff[summary.run_id] = {
            "added": sorted(set(summary.files) - set(base)),
            "removed": sorted(set(base) - set(summary.files)),
            "changed": sorted(p for p in set(base) & set(summary.files)
                              if base[p] != summary.files[p]),
        }
    return Comparison(runs, node_ids, diff)
