"""How runs and events read at a terminal: one-line event summaries, times, the runs table, the
``show`` page. Pure functions from stored values to text or rich renderables; nothing here writes.

Each event type has its summary function in :data:`_SUMMARIES` (a registry, not an ``if`` chain);
a type without one is shown as its payload's compact JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from isolane.tracking.cost import CostTotals, money, totals_of_update
from isolane.tracking.rows import DagEdgeRow, DagNodeRow, DiagnosticRow, RunRow

if TYPE_CHECKING:
    from isolane.schemas.envelope import Event

__all__ = [
    "STATUS_STYLES",
    "error_text",
    "event_line",
    "format_duration",
    "format_time",
    "run_duration",
    "runs_table",
    "short",
    "short_id",
    "show_page",
    "status_text",
    "summarize",
]

SHORT_ID: Final = 12
_MAX_SUMMARY: Final = 240

STATUS_STYLES: Final[Mapping[str, str]] = {
    "queued": "dim", "starting": "cyan", "running": "bold cyan", "pending": "dim",
    "completed": "green", "won": "bold green", "skipped": "dim",
    "failed": "red", "crashed": "bold red", "timed_out": "yellow", "cancelled": "yellow",
    "lost": "magenta",
}


def short_id(run_id: str) -> str:
    return run_id[:SHORT_ID]


def short(value: Any, limit: int = 120) -> str:
    """``value`` as one line of at most ``limit`` characters (JSON for non-strings)."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_text(status: str | None) -> Text:
    status = status or "-"
    return Text(status, style=STATUS_STYLES.get(status, ""))


def format_time(ts: float | None) -> str:
    """Local wall-clock time of an epoch timestamp, to the second."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def run_duration(row: RunRow, *, now: float | None = None) -> float | None:
    """Seconds the run has taken: to its end, or until now while it is still going."""
    if row.started_at is None:
        return None
    end = row.ended_at if row.ended_at is not None else (now if now is not None else time.time())
    return max(0.0, end - row.started_at)


# -- event summaries ------------------------------------------------------------------------------

_Summary = Callable[[Mapping[str, Any]], str]


def _cost(cost: Any) -> str:
    return "unpriced" if cost is None else f"${float(cost):.4f}"


def _arrow(a: Any, b: Any) -> str:
    """``a → b``, or just the end that is known."""
    if a is None or b is None:
        return str(b if a is None else a)
    return f"{a} → {b}"


def error_text(error_type: str | None, error: str | None) -> str:
    """``Type: message`` without saying the type twice (workers often put it in the message)."""
    error = error or ""
    if not error_type:
        return error or "error"
    if error.startswith(error_type.rpartition(".")[2]):
        return error
    return f"{error_type}: {error}"


def _custom(d: Mapping[str, Any]) -> str:
    rest = " ".join(f"{k}={short(v, 60)}" for k, v in d.items() if k != "name")
    return f"{d.get('name', '?')} {rest}".rstrip()


_SUMMARIES: Final[Mapping[str, _Summary]] = {
    "run_started": lambda d: (f"workflow {d.get('workflow', '?')} attempt {d.get('attempt', 1)} "
                              f"pid {d.get('pid', '?')}"),
    "run_completed": lambda d: f"result {short(d.get('result'))} in {format_duration(d.get('duration_s'))}",
    "run_failed": lambda d: short(error_text(d.get("error_type"), d.get("error"))),
    "run_cancelled": lambda d: short(d.get("reason", "")),
    "heartbeat": lambda d: (f"rss {int(d.get('rss_bytes', 0)) / 2**20:.0f} MiB, "
                            f"cpu {float(d.get('cpu_s', 0.0)):.1f}s"),
    "phase_change": lambda d: _arrow(d.get("previous"), d.get("phase")),
    "dag_created": lambda d: f"{len(d.get('nodes', []))} nodes, {len(d.get('edges', []))} edges",
    "dag_node_added": lambda d: f"{d.get('label', '')} ({d.get('node_type', 'step')})",
    "dag_node_update": lambda d: str(d.get("status", "?")) + (
        f": {short(d['error'])}" if d.get("error") else ""),
    "agent_message": lambda d: (f"{_arrow(d.get('sender'), d.get('recipient'))}: "
                                f"{short(d.get('content'))}"),
    "handoff": lambda d: _arrow(d.get("from_agent"), d.get("to_agent")),
    "tool_call": lambda d: f"{d.get('agent') or '?'} calls {d.get('tool', '?')}({short(d.get('arguments'), 80)})",
    "tool_result": lambda d: (f"{d.get('tool') or d.get('call_id') or '?'}"
                              f"{' error' if d.get('is_error') else ''} → {short(d.get('content'))}"),
    "code_execution": lambda d: (f"{d.get('language', '?')} exit {d.get('exit_code')}: "
                                 f"{short(d.get('output', ''), 100)}"),
    "llm_call": lambda d: (f"{d.get('model', '?')} {d.get('prompt_tokens', 0)}+"
                           f"{d.get('completion_tokens', 0)} tokens {_cost(d.get('cost'))}"),
    "llm_retry": lambda d: (f"{d.get('agent') or '?'} ({d.get('model') or '?'}) {d.get('endpoint', '?')} "
                            f"got {d.get('status') or d.get('reason') or 'no answer'}, "
                            f"retry in {float(d.get('retry_in_s', 0.0)):.2f}s"),
    "cost_update": lambda d: f"total {money(totals_of_update(d))}",
    "file_created": lambda d: f"{d.get('path', '?')} ({d.get('size', 0)} B)",
    "file_modified": lambda d: f"{d.get('path', '?')} ({d.get('size', 0)} B, v{d.get('version', 1)})",
    "output": lambda d: f"[{d.get('stream', '?')}] {short(str(d.get('text', '')).rstrip(), 200)}",
    "state_snapshot": lambda d: (f"{len(d.get('new_messages', []))} new messages"
                                 f"{' (full)' if d.get('full') else ''}"),
    "human_input_request": lambda d: f"{d.get('agent') or '?'} asks: {short(d.get('prompt', ''))}",
    "error": lambda d: short(error_text(d.get("error_type"), d.get("message"))),
    "custom": _custom,
}


def summarize(event: Event) -> str:
    """One line saying what ``event`` reports."""
    formatter = _SUMMARIES.get(event.type)
    try:
        text = formatter(event.data) if formatter is not None else short(event.data)
    except (TypeError, ValueError, KeyError):  # a payload that does not have its declared shape
        text = short(event.data)
    return short(text, _MAX_SUMMARY)


def event_line(event: Event) -> str:
    """The plain-text line of an event: ``seq time type node summary``."""
    stamp = datetime.fromtimestamp(event.ts).strftime("%H:%M:%S.%f")[:-3]
    return f"{event.seq:>6} {stamp} {event.type:<17} {event.node_id or '-':<14} {summarize(event)}"


# -- tables ---------------------------------------------------------------------------------------


def runs_table(rows: Sequence[RunRow], event_counts: Mapping[str, int]) -> Table:
    """The ``isolane runs`` table."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in (("id", "left"), ("name / workflow", "left"), ("status", "left"),
                            ("created", "left"), ("duration", "right"), ("events", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    now = time.time()
    for row in rows:
        label = f"{row.name} ({row.workflow})" if row.name else row.workflow
        table.add_row(short_id(row.id), Text(short(label, 48)), status_text(row.status),
                      format_time(row.created_at), format_duration(run_duration(row, now=now)),
                      str(event_counts.get(row.id, row.last_seq)))
    return table


def _dag_table(nodes: Sequence[DagNodeRow], edges: Sequence[DagEdgeRow], limit: int) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False,
                  title=f"DAG: {len(nodes)} nodes, {len(edges)} edges", title_justify="left")
    table.add_column("node")
    table.add_column("status")
    table.add_column("duration", justify="right")
    table.add_column("error")
    for node in nodes[:limit]:
        took = (node.ended_at - node.started_at
                if node.started_at is not None and node.ended_at is not None else None)
        label = node.node_id if node.label in ("", node.node_id) else f"{node.node_id} ({node.label})"
        table.add_row(Text("  " * node.depth + label), status_text(node.status),
                      format_duration(took), Text(short(node.error, 60) if node.error else ""))
    if len(nodes) > limit:
        table.add_row(f"… {len(nodes) - limit} more (isolane show --json lists all)", "", "", "")
    return table


def _worker_text(row: RunRow) -> str | None:
    """Where the run's last worker ran: ``local pid 4242``, ``ray node 3f2a… (…) · relay …``."""
    worker = row.meta.get("worker") or {}
    location = worker.get("location")
    if not location:
        return None
    where = f"{location} pid {worker['pid']}" if location == "local" and worker.get("pid") else location
    return f"{where} · relay {worker['actor']}" if worker.get("actor") else where


def show_page(
    row: RunRow,
    *,
    nodes: Sequence[DagNodeRow],
    edges: Sequence[DagEdgeRow],
    event_counts: Mapping[str, int],
    diagnostics: Sequence[DiagnosticRow],
    cost: CostTotals,
    traceback: str | None,
    node_limit: int = 60,
) -> RenderableType:
    """Everything ``isolane show`` says about a run, as one renderable."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    total_events = sum(event_counts.values())
    for name, value in (
        ("run", row.id), ("name", row.name), ("workflow", row.workflow), ("task", row.task),
        ("status", status_text(row.status)), ("phase", row.phase), ("attempt", str(row.attempt)),
        ("created", format_time(row.created_at)), ("started", format_time(row.started_at)),
        ("ended", format_time(row.ended_at)), ("duration", format_duration(run_duration(row))),
        ("exit code", None if row.exit_code is None else str(row.exit_code)),
        ("parent run", row.parent_run_id), ("branch point", row.branch_point_node),
        ("session", row.session_id), ("worker", _worker_text(row)), ("work dir", row.work_dir),
        ("config", short(row.config, 200) if row.config else None),
        ("events", f"{total_events} (last seq {row.last_seq})"),
        ("diagnostics", _diagnostic_counts(diagnostics)),
    ):
        if value is not None and value != "":
            fields.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    parts: list[RenderableType] = [fields]
    if row.error or row.error_type:
        parts.append(Text(f"\nerror: {error_text(row.error_type, row.error)}", style="red"))
    if traceback:
        parts.append(Text(traceback.rstrip(), style="dim"))
    notable = _notable_diagnostics(diagnostics)
    if notable:
        parts.append(Text("\ndiagnostics:", style="bold"))
        for diagnostic in notable:
            parts.append(Text(f"  {diagnostic.kind}: ", style="yellow") + Text(short(diagnostic.reason, 400)))
    if row.result is not None:
        parts.append(Text("\nresult: ", style="bold") + Text(short(row.result, 2000)))
    if cost.calls:
        cached = f" ({cost.cached_calls} answered from cache)" if cost.cached_calls else ""
        parts.append(Text(
            f"\nLLM: {cost.calls} calls{cached}, {cost.prompt_tokens}+{cost.completion_tokens} billed "
            f"tokens, cost {money(cost)} ({', '.join(cost.models)})"))
    if nodes:
        parts.append(Text(""))
        parts.append(_dag_table(nodes, edges, node_limit))
    if event_counts:
        by_type = Table(box=None, header_style="bold", pad_edge=False, title="events by type",
                        title_justify="left")
        by_type.add_column("type")
        by_type.add_column("count", justify="right")
        for type_, count in sorted(event_counts.items(), key=lambda kv: (-kv[1], kv[0])):
            by_type.add_row(type_, str(count))
        parts.append(Text(""))
        parts.append(by_type)
    return Group(*parts)


#: Diagnostics that change how a run's outcome should be read: ``isolane show`` prints them.
_NOTABLE_KINDS: Final = ("outcome_contradiction", "resettled", "spool_refused", "restart",
                         "store_refused", "invalid_event_flood")


def _diagnostic_counts(diagnostics: Sequence[DiagnosticRow]) -> str:
    """``"3 (restart 2, seq_gap 1)"``: the count, then by kind."""
    if not diagnostics:
        return "0"
    kinds: dict[str, int] = {}
    for diagnostic in diagnostics:
        kinds[diagnostic.kind] = kinds.get(diagnostic.kind, 0) + 1
    by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{len(diagnostics)} ({by_kind})"


def _notable_diagnostics(diagnostics: Sequence[DiagnosticRow], *, per_kind: int = 3) -> list[DiagnosticRow]:
    """The latest few diagnostics of each notable kind, oldest first."""
    kept: list[DiagnosticRow] = []
    for kind in _NOTABLE_KINDS:
        kept.extend([d for d in diagnostics if d.kind == kind][-per_kind:])
    return sorted(kept, key=lambda d: d.ts)
