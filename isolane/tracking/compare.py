"""Runs side by side: status, duration, cost and tokens by model, node statuses, files.

Everything comes from the store, so any runs can be compared (a run and its branches, the racers
of a group, two unrelated runs). Files are compared by content hash against the first run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from isolane.errors import ConfigError
from isolane.tracking.cost import roll_up
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
    #: :mod:`isolane.tracking.cost`'s rules: ``None`` when no call is priced; billed tokens only.
    cost_usd: float | None
    unpriced_calls: int
    calls: int
    cached_calls: int
    prompt_tokens: int
    completion_tokens: int
    #: Per model: :meth:`CostTotals.as_data <isolane.tracking.cost.CostTotals.as_data>`.
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
    cost = roll_up(store.llm_calls(row.id))
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
        duration_s=duration, cost_usd=cost.total.cost, unpriced_calls=cost.total.unpriced_calls,
        calls=cost.total.calls, cached_calls=cost.total.cached_calls, prompt_tokens=cost.total.prompt_tokens,
        completion_tokens=cost.total.completion_tokens,
        by_model={model: totals.as_data() for model, totals in cost.by("model").items()},
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
