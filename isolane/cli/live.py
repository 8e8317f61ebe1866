"""The live view of one run at a terminal, folded from its events.

:class:`RunView` is a plain state object: :meth:`RunView.apply` folds one event in (a registry of
per-type handlers), :meth:`RunView.__rich__` draws the current state. The caller owns the
``rich.live.Live`` and decides when to redraw, so drawing never races with folding.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from isolane.cli.render import format_duration, short, short_id, status_text, summarize
from isolane.schemas.envelope import Event
from isolane.tracking.cost import CostTotals, money, totals_of_update

__all__ = ["RunView"]

_TAIL: Final = 8
_MAX_NODES_SHOWN: Final = 14
#: Event types whose lines make up the "last lines" panel.
_TAIL_TYPES: Final = frozenset({
    "output", "agent_message", "handoff", "tool_call", "tool_result", "code_execution", "error",
    "custom", "human_input_request", "run_failed", "run_cancelled", "file_created", "file_modified",
})
_RUN_END: Final[Mapping[str, str]] = {
    "run_completed": "completed", "run_failed": "failed", "run_cancelled": "cancelled"}


@dataclass(slots=True)
class _Node:
    label: str
    depth: int
    status: str = "pending"


class RunView:
    """What a terminal shows while a run goes: status, phase, DAG nodes, last lines, events, cost."""

    def __init__(self, run_id: str, *, workflow: str, task: str) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.task = task
        self.status = "queued"
        self.phase: str | None = None
        self.nodes: dict[str, _Node] = {}
        self.tail: deque[tuple[str, str]] = deque(maxlen=_TAIL)
        self.events = 0
        self.cost = CostTotals()
        self.started = time.monotonic()
        self.ended: float | None = None

    # -- folding ----------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold one event into the view."""
        self.events += 1
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event, event.data)
        if event.type in _TAIL_TYPES:
            self.tail.append((event.type, summarize(event)))

    def finish(self, status: str) -> None:
        """The run ended with ``status`` (the outcome is authoritative over the events)."""
        self.status = status
        self.ended = time.monotonic()

    def _started(self, event: Event, data: Mapping[str, Any]) -> None:
        self.status = "running"

    def _ended(self, event: Event, data: Mapping[str, Any]) -> None:
        self.status = _RUN_END[event.type]

    def _phase(self, event: Event, data: Mapping[str, Any]) -> None:
        self.phase = data.get("phase")

    def _dag_created(self, event: Event, data: Mapping[str, Any]) -> None:
        for spec in data.get("nodes", []):
            self.nodes.setdefault(str(spec.get("id")), _Node(
                label=str(spec.get("label") or spec.get("id")), depth=int(spec.get("depth", 0))))

    def _node_added(self, event: Event, data: Mapping[str, Any]) -> None:
        if event.node_id is not None:
            self.nodes.setdefault(event.node_id, _Node(
                label=str(data.get("label") or event.node_id), depth=int(data.get("depth", 0))))

    def _node_update(self, event: Event, data: Mapping[str, Any]) -> None:
        if event.node_id is not None:
            node = self.nodes.setdefault(event.node_id, _Node(label=event.node_id, depth=0))
            node.status = str(data.get("status", node.status))

    def _cost_update(self, event: Event, data: Mapping[str, Any]) -> None:
        # The worker's running totals follow each llm_call; read by the rules of every other reader.
        self.cost = totals_of_update(data)

    # -- drawing ----------------------------------------------------------------------------------

    def __rich__(self) -> RenderableType:
        elapsed = (self.ended or time.monotonic()) - self.started
        head = Text.assemble(
            ("run ", "bold"), short_id(self.run_id), "  ", status_text(self.status),
            f"  {self.workflow}", ("  phase ", "dim"), self.phase or "-",
            ("  events ", "dim"), str(self.events), ("  elapsed ", "dim"), format_duration(elapsed),
        )
        if self.cost.calls:
            cached = f" ({self.cost.cached_calls} cached)" if self.cost.cached_calls else ""
            head.append_text(Text.assemble(("  cost ", "dim"), money(self.cost),
                                           ("  tokens ", "dim"), f"{self.cost.total_tokens}{cached}"))
        parts: list[RenderableType] = [head]
        if self.task:
            parts.append(Text(short(self.task, 200), style="dim"))
        if self.nodes:
            parts.append(self._nodes_table())
        if self.tail:
            lines = Table.grid(padding=(0, 1))
            lines.add_column(style="dim", no_wrap=True)
            lines.add_column(no_wrap=True, overflow="ellipsis")
            for type_, text in self.tail:
                lines.add_row(type_, Text(text))
            parts.append(lines)
        return Group(*parts)

    def _nodes_table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        items = list(self.nodes.items())
        # Keep the view short: the active nodes and the most recent ones matter most.
        if len(items) > _MAX_NODES_SHOWN:
            hidden = len(items) - _MAX_NODES_SHOWN
            items = items[-_MAX_NODES_SHOWN:]
            table.add_row(Text(f"… {hidden} earlier nodes", style="dim"), "")
        for node_id, node in items:
            label = node_id if node.label == node_id else f"{node_id} ({node.label})"
            table.add_row(Text("  " * node.depth + label), status_text(node.status))
        return table


_Handler = Callable[[RunView, Event, Mapping[str, Any]], None]

_HANDLERS: Final[Mapping[str, _Handler]] = {
    "run_started": RunView._started,
    "run_completed": RunView._ended,
    "run_failed": RunView._ended,
    "run_cancelled": RunView._ended,
    "phase_change": RunView._phase,
    "dag_created": RunView._dag_created,
    "dag_node_added": RunView._node_added,
    "dag_node_update": RunView._node_update,
    "cost_update": RunView._cost_update,
}
