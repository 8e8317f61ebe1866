"""A run as a notebook shows it: one HTML block, read from the store, every value escaped.

::

    RunHandle._repr_html_ / SyncRun._repr_html_ / wait(progress=True)
        └─▶ snapshot(store, run_id)   the run row, its DAG, the one cost rollup
                                      (tracking.cost.roll_up), the last events, pending questions
        └─▶ run_html(snapshot)        status · DAG (nested list, a badge per node) · cost table
                                      · last events · the question waiting and how to answer it
    Outcome._repr_html_ ──▶ outcome_html(outcome)

Everything a worker wrote is untrusted: every text goes through :func:`html.escape`, long values
are cut, and nothing is a link. The HTML is self-contained (inline styles, no script), so it
renders the same in Jupyter, VS Code and a saved ``.ipynb``.
"""

from __future__ import annotations

import html
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from isolane import settings
from isolane.executor.human import EVENT_TYPES, HumanRequest, pending_requests
from isolane.schemas.envelope import Event
from isolane.tracking.cost import CostRollup, money, roll_up
from isolane.tracking.rows import DagNodeRow, RunRow

if TYPE_CHECKING:
    from isolane.executor.run import Outcome
    from isolane.tracking.store import Store

__all__ = ["LAST_EVENTS", "RunSnapshot", "outcome_html", "run_html", "snapshot", "store_options"]

#: How many of the run's latest events the display lists.
LAST_EVENTS: Final = 8
_MAX_TEXT: Final = 300
_MAX_NODES: Final = 60

#: Badge colours (background, text) per run or node status.
_BADGES: Final[Mapping[str, tuple[str, str]]] = {
    "queued": ("#eeeeee", "#424242"), "pending": ("#f5f5f5", "#616161"),
    "running": ("#e3f2fd", "#0d47a1"), "completed": ("#e8f5e9", "#1b5e20"),
    "won": ("#e8f5e9", "#1b5e20"), "failed": ("#ffebee", "#b71c1c"),
    "crashed": ("#ffebee", "#b71c1c"), "timed_out": ("#fff3e0", "#e65100"),
    "cancelled": ("#fff8e1", "#8d6e00"), "lost": ("#fff8e1", "#8d6e00"),
    "skipped": ("#fafafa", "#9e9e9e"), "interrupted": ("#fff3e0", "#e65100"),
}
_BOX: Final = ("font-family: -apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, "
               "sans-serif; font-size: 13px; line-height: 1.45; border: 1px solid #ddd; "
               "border-radius: 6px; padding: 8px 12px; max-width: 980px")
_TABLE: Final = "border-collapse: collapse; font-size: 12px; margin: 4px 0"
_CELL: Final = "padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top"


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """What the display shows of a run, read at one moment."""

    run: RunRow
    nodes: Sequence[DagNodeRow]
    cost: CostRollup
    last_events: Sequence[Event]
    pending: Sequence[HumanRequest]
    taken_at: float
    #: The CLI options that name the run's store (``--home DIR``), for the answer command.
    where: str = ""


def store_options(home: Path, db_url: str | None) -> str:
    """The ``isolane`` options that reach the store an executor uses: ``--home DIR`` unless it
    is the default; a database URL is not printed (it may hold a password)."""
    if db_url is not None:
        return "" if db_url == settings.db_url() else " --db URL"
    if home.resolve() == settings.home().resolve():
        return ""
    return f" --home {shlex.quote(str(home.resolve()))}"


def snapshot(store: Store, run_id: str, *, last: int = LAST_EVENTS, where: str = "") -> RunSnapshot:
    """Read what :func:`run_html` draws (blocking: a few small queries); ``where``: see
    :func:`store_options`."""
    row = store.get_run(run_id)
    nodes, _ = store.dag(row.id)
    cost = roll_up(store.llm_calls(row.id))
    recent = store.events(row.id, after_seq=max(0, row.last_seq - last))[-last:]
    waiting = pending_requests(store.events(row.id, types=EVENT_TYPES))
    return RunSnapshot(run=row, nodes=nodes, cost=cost, last_events=recent, pending=waiting,
                       taken_at=time.time(), where=where)


def _e(value: Any, limit: int = _MAX_TEXT) -> str:
    """``value`` as escaped text, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    if len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text, quote=True)


def _badge(status: str) -> str:
    background, colour = _BADGES.get(status, ("#eeeeee", "#212121"))
    return (f'<span style="background:{background}; color:{colour}; border-radius:4px; '
            f'padding:0 6px; font-weight:600">{_e(status, 40)}</span>')


def _duration(row: RunRow, now: float) -> str:
    if row.started_at is None:
        return "-"
    seconds = (row.ended_at or now) - row.started_at
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def _head(snap: RunSnapshot) -> str:
    row = snap.run
    name = f" <b>{_e(row.name, 80)}</b>" if row.name else ""
    facts = [f"workflow <code>{_e(row.workflow, 120)}</code>", f"events {row.last_seq}",
             f"elapsed {_duration(row, snap.taken_at)}", f"cost {_e(money(snap.cost.total))}"]
    if row.phase:
        facts.insert(1, f"phase {_e(row.phase, 60)}")
    task = f'<div style="color:#555">{_e(row.task)}</div>' if row.task else ""
    return (f'<div>run <code>{_e(row.id, 64)}</code>{name} {_badge(row.status)} '
            f'<span style="color:#555">{" · ".join(facts)}</span></div>{task}')


def _dag(nodes: Sequence[DagNodeRow]) -> str:
    """The DAG as nested lists (sub-nodes under their parent), a status badge per node."""
    if not nodes:
        return ""
    known = {n.node_id for n in nodes}
    children: dict[str | None, list[DagNodeRow]] = {}
    for node in nodes[:_MAX_NODES]:
        parent = node.parent_node_id if node.parent_node_id in known else None
        children.setdefault(parent, []).append(node)

    def tree(parent: str | None, depth: int) -> str:
        items = []
        for node in children.get(parent, []):
            label = "" if node.label in ("", node.node_id) else f" {_e(node.label, 80)}"
            kind = "" if node.node_type in ("step", "agent") else f' <i style="color:#777">{_e(node.node_type, 30)}</i>'
            error = f' <span style="color:#b71c1c">{_e(node.error, 160)}</span>' if node.error else ""
            sub = tree(node.node_id, depth + 1) if depth < 12 else ""
            items.append(f"<li><code>{_e(node.node_id, 80)}</code>{label}{kind} {_badge(node.status)}"
                         f"{error}{sub}</li>")
        return f'<ul style="margin:2px 0; padding-left:18px">{"".join(items)}</ul>' if items else ""

    more = f'<div style="color:#777">… {len(nodes) - _MAX_NODES} more nodes</div>' if len(nodes) > _MAX_NODES else ""
    return f"<details open><summary>DAG ({len(nodes)} nodes)</summary>{tree(None, 0)}{more}</details>"


def _cost(cost: CostRollup) -> str:
    if cost.total.calls == 0:
        return ""
    head = "".join(f'<th style="{_CELL}">{h}</th>' for h in
                   ("model", "calls", "cached", "prompt tokens", "completion tokens", "cost"))
    rows = []
    for model, totals in [*cost.by("model").items(), ("total", cost.total)]:
        cells = (model, totals.calls, totals.cached_calls, totals.prompt_tokens,
                 totals.completion_tokens, money(totals))
        rows.append("<tr>" + "".join(f'<td style="{_CELL}">{_e(c, 80)}</td>' for c in cells) + "</tr>")
    return (f'<details open><summary>cost</summary><table style="{_TABLE}"><tr>{head}</tr>'
            f'{"".join(rows)}</table></details>')


def _events(events: Sequence[Event]) -> str:
    if not events:
        return ""
    rows = "".join(
        f'<tr><td style="{_CELL}">{e.seq}</td><td style="{_CELL}"><code>{_e(e.type, 40)}</code></td>'
        f'<td style="{_CELL}">{_e(e.node_id or "", 60)}</td><td style="{_CELL}">{_e(e.data, 200)}</td></tr>'
        for e in events)
    return (f'<details><summary>last {len(events)} events</summary>'
            f'<table style="{_TABLE}">{rows}</table></details>')


def _pending(snap: RunSnapshot, handle_name: str, awaited: bool, waiting: bool) -> str:
    """Each waiting question, with the exact call (and command) that answers it; while the cell
    itself waits on the run (``waiting``) no other cell can run, so only the command."""
    if not snap.pending:
        return ""
    prefix = "await " if awaited else ""
    blocks = []
    for request in snap.pending:
        who = request.agent or request.node_id or "the workflow"
        call = f'{prefix}{handle_name}.answer({request.request_id!r}, "your answer")'
        command = f"isolane answer {snap.run.id[:12]} {request.request_id} 'your answer'{snap.where}"
        blocks.append(
            f'<div style="background:#fffde7; border-left:4px solid #f9a825; padding:4px 8px; margin:4px 0">'
            f'<b>? {_e(who, 80)} asks:</b> {_e(request.prompt, 1000)}<br>'
            + ('<span style="color:#555">this cell waits on the run; answer in a terminal:</span> '
               if waiting else
               f'<span style="color:#555">answer in a cell:</span> <code>{_e(call, 200)}</code>'
               ' <span style="color:#555">or in a terminal:</span> ')
            + f"<code>{_e(command, 200)}</code></div>")
    return "".join(blocks)


def _ending(row: RunRow) -> str:
    if row.status in ("completed", "won"):
        return f'<div>result: <code>{_e(row.result, 1000)}</code></div>'
    if row.error:
        kind = f"{row.error_type}: " if row.error_type else ""
        return f'<div style="color:#b71c1c">{_e(kind + row.error, 1000)}</div>'
    return ""


def run_html(snap: RunSnapshot, *, handle_name: str = "handle", awaited: bool = True,
             waiting: bool = False) -> str:
    """The run as one self-contained HTML block; ``handle_name``/``awaited`` spell the answer
    call shown for a waiting question (``await handle.answer(...)``, ``run.answer(...)``);
    ``waiting``: drawn by the cell that waits on the run (progress)."""
    parts = [_head(snap), _pending(snap, handle_name, awaited, waiting), _ending(snap.run), _dag(snap.nodes),
             _cost(snap.cost), _events(snap.last_events)]
    return f'<div class="isolane-run" style="{_BOX}">{"".join(parts)}</div>'


def outcome_html(outcome: Outcome) -> str:
    """How a run ended, as one HTML block."""
    lines = [f"<div>run <code>{_e(outcome.run_id, 64)}</code> {_badge(outcome.status)}</div>"]
    if outcome.ok:
        lines.append(f"<div>result: <code>{_e(outcome.result, 2000)}</code></div>")
    else:
        kind = f"{outcome.error_type}: " if outcome.error_type else ""
        lines.append(f'<div style="color:#b71c1c">{_e(kind + (outcome.error or ""), 2000)}</div>')
        if outcome.exit_code is not None:
            lines.append(f"<div>worker exit code {outcome.exit_code}</div>")
        if outcome.traceback:
            lines.append(f'<details><summary>traceback</summary><pre style="font-size:11px">'
                         f"{_e(outcome.traceback, 20000)}</pre></details>")
    return f'<div class="isolane-outcome" style="{_BOX}">{"".join(lines)}</div>'
