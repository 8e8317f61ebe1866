"""A run's stored events as spans: the pure translation both exports share (no OpenTelemetry here).

::

    run row + its events (seq order) ──spans_of──▶ [SpanSpec]  (one trace per run)

    run ─┬─ attempt 1 ─┬─ node planning ─┬─ node planning/planner#1 ─┬─ llm  (chat MODEL)
         │             │                 │                           ├─ tool (execute_tool NAME)
         │             │                 │                           └─ code (execute_code LANG)
         └─ attempt 2  └─ node control ...

* a root span per run, a child per attempt (``run_started``), a span per DAG node nested as the
  DAG nests (a top-level node under the attempt it started in), and a span per ``llm_call``,
  ``tool_call`` and ``code_execution`` under the node its event names;
* times are real: an LLM call and a code execution end at their event and last their
  ``duration_s``; a tool call runs from ``tool_call`` to its ``tool_result``; a node from its
  first ``running`` update to its last final one;
* attributes follow the OpenTelemetry GenAI conventions (``gen_ai.*``), with OpenInference's
  (``openinference.span.kind``, ``llm.token_count.*``) so that Phoenix shows kinds and tokens,
  and isolane's ids and cost under ``isolane.*``. Tokens are billed tokens, as in
  :mod:`isolane.tracking.cost`: a call answered from AG2's cache reports 0 (its tokens in
  ``isolane.cached_tokens``), so a backend's token sums equal ``isolane cost``;
* a branch's root span links to the span of its branch point in the parent run's trace;
* agent messages, hand-offs, errors, retries, files and human input become span events of the
  span they happened in (at most :data:`MAX_SPAN_EVENTS` each). ``custom`` events do not: a
  workflow may emit them by the million, and a live exporter that asked for them would cost the
  executor's feed that much (``scripts/bench.py otel``).

A span whose end is not known yet (a node still running in a live run) has ``end=None``; the
live exporter waits for it. The stored events are already redacted: nothing here reads anything
else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import orjson

from isolane.schemas.envelope import Event
from isolane.telemetry import ids

__all__ = ["AttrValue", "RunLike", "SpanEventSpec", "SpanLinkSpec", "SpanSpec", "spans_of"]

AttrValue = str | bool | int | float

#: Text attributes longer than this are cut (a backend refuses or truncates huge values anyway).
TEXT_LIMIT: Final = 4000
#: Span events kept per span (OpenTelemetry's SDK keeps 128 by default); the rest are counted in
#: ``isolane.dropped_events``.
MAX_SPAN_EVENTS: Final = 128
_UNFINISHED: Final = frozenset({"queued", "starting", "running"})  # tracking.store.UNFINISHED_STATUSES
_ERROR_STATUSES: Final = frozenset({"failed", "crashed", "timed_out"})
_TERMINAL_EVENTS: Final = frozenset({"run_completed", "run_failed", "run_cancelled"})
_NODE_FINAL: Final = frozenset({"completed", "failed", "skipped", "cancelled"})
#: Events that become span events of the span they happened in.
_SPAN_EVENT_TYPES: Final = frozenset({
    "agent_message", "handoff", "error", "llm_retry", "phase_change", "human_input_request",
    "human_input_response", "file_created", "file_modified", "file_deleted"})


class RunLike(Protocol):
    """What the translation reads of a run (a stored :class:`~isolane.tracking.rows.RunRow` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def workflow(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def ended_at(self) -> float | None: ...
    @property
    def parent_run_id(self) -> str | None: ...
    @property
    def branch_point_node(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class SpanEventSpec:
    name: str
    ts: float
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanLinkSpec:
    trace_id: int
    span_id: int
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanSpec:
    """One span, described: ``kind`` is isolane's (``run``, ``attempt``, ``node``, ``llm``,
    ``tool``, ``code``); ``error`` set makes the span's status ERROR with that description."""

    name: str
    kind: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start: float
    end: float | None
    attributes: Mapping[str, AttrValue]
    events: tuple[SpanEventSpec, ...] = ()
    links: tuple[SpanLinkSpec, ...] = ()
    error: str | None = None


def _text(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"


def _attrs(**values: object) -> dict[str, AttrValue]:
    """Keyword names with ``__`` for ``.``; ``None`` values are left out, others made scalar."""
    out: dict[str, AttrValue] = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key.replace("__", ".")] = value if isinstance(value, str | bool | int | float) else _text(value)
    return out


@dataclass(slots=True)
class _Draft:
    """A span being assembled (mutable while the events are walked)."""

    name: str
    kind: str
    key: str
    parent_key: str | None
    start: float
    end: float | None
    attributes: dict[str, AttrValue]
    events: list[SpanEventSpec] = field(default_factory=list)
    error: str | None = None


class _Builder:
    def __init__(self, run: RunLike) -> None:
        self.run = run
        self.drafts: dict[str, _Draft] = {}
        self.attempt: str | None = None
        self.run_end: float | None = None
        self.open_tools: list[tuple[str | None, str | None, str]] = []  # (call_id, tool, span key)

    def add(self, draft: _Draft) -> _Draft:
        return self.drafts.setdefault(draft.key, draft)

    def home_of(self, node_id: str | None) -> str:
        """The span an event of ``node_id`` happened in: its node's, else the current attempt's."""
        if node_id is not None and ids.node_key(node_id) in self.drafts:
            return ids.node_key(node_id)
        return self.attempt or ids.RUN_KEY

    # -- per event type ----------------------------------------------------------------------

    def run_started(self, event: Event) -> None:
        number = int(event.data.get("attempt") or 1)
        if self.attempt is not None:
            self.drafts[self.attempt].end = event.ts
        draft = self.add(_Draft(
            f"attempt {number}", "attempt", ids.attempt_key(number), ids.RUN_KEY, event.ts, None,
            _attrs(openinference__span__kind="CHAIN", isolane__attempt=number,
                   isolane__worker__pid=event.data.get("pid"), isolane__worker__host=event.data.get("host"),
                   isolane__resumed_from_seq=event.data.get("resumed_from_seq"))))
        self.attempt = draft.key

    def node(self, node_id: str, ts: float, *, label: str = "", node_type: str = "step",
             parent: str | None = None, meta: Mapping[str, object] | None = None) -> _Draft:
        key = ids.node_key(node_id)
        if key in self.drafts:
            return self.drafts[key]
        agent = (meta or {}).get("agent")
        attrs = _attrs(openinference__span__kind="AGENT" if node_type == "agent" else "CHAIN",
                       isolane__node__id=node_id, isolane__node__type=node_type,
                       gen_ai__agent__name=agent if isinstance(agent, str) else None,
                       gen_ai__operation__name="invoke_agent" if node_type == "agent" else None)
        parent_key = ids.node_key(parent) if parent and ids.node_key(parent) in self.drafts else (
            self.attempt or ids.RUN_KEY)
        return self.add(_Draft(label or node_id, "node", key, parent_key, ts, None, attrs))

    def node_update(self, event: Event) -> None:
        if event.node_id is None:
            return
        draft = self.node(event.node_id, event.ts)
        status = str(event.data.get("status", ""))
        if status == "running" and draft.attributes.get("isolane.node.status") in (None, "pending"):
            draft.start = event.ts
        draft.attributes["isolane.node.status"] = status
        if status in _NODE_FINAL:
            draft.end = event.ts
            draft.error = str(event.data.get("error") or "node failed") if status == "failed" else None
        else:
            draft.end = None

    def llm_call(self, event: Event) -> None:
        d = event.data
        cached = bool(d.get("cached", False))
        prompt = 0 if cached else int(d.get("prompt_tokens") or 0)
        completion = 0 if cached else int(d.get("completion_tokens") or 0)
        model = str(d.get("model", ""))
        attrs = _attrs(
            openinference__span__kind="LLM", gen_ai__operation__name="chat", gen_ai__request__model=model,
            gen_ai__response__model=model, gen_ai__usage__input_tokens=prompt,
            gen_ai__usage__output_tokens=completion, gen_ai__agent__name=d.get("agent"),
            llm__model_name=model, llm__token_count__prompt=prompt, llm__token_count__completion=completion,
            llm__token_count__total=prompt + completion, isolane__cost=d.get("cost"),
            isolane__cost_source=d.get("cost_source"), isolane__cached=cached,
            isolane__cached_tokens=int(d.get("prompt_tokens") or 0) + int(d.get("completion_tokens") or 0)
            if cached else None)
        self.leaf(event, f"chat {model}", "llm", attrs, duration=float(d.get("duration_s") or 0.0))

    def tool_call(self, event: Event) -> None:
        d = event.data
        tool = str(d.get("tool", ""))
        attrs = _attrs(openinference__span__kind="TOOL", gen_ai__operation__name="execute_tool",
                       gen_ai__tool__name=tool, gen_ai__tool__call__id=d.get("call_id"),
                       gen_ai__agent__name=d.get("agent"), tool__name=tool,
                       input__value=d.get("arguments"))
        draft = self.leaf(event, f"execute_tool {tool}", "tool", attrs, duration=None)
        self.open_tools.append((d.get("call_id"), tool, draft.key))

    def tool_result(self, event: Event) -> None:
        d = event.data
        call_id, tool = d.get("call_id"), d.get("tool")
        for i, (open_id, open_tool, key) in enumerate(self.open_tools):
            if (call_id is not None and open_id == call_id) or (call_id is None and open_tool == tool):
                del self.open_tools[i]
                draft = self.drafts[key]
                draft.end = max(event.ts, draft.start)
                if d.get("content") is not None:
                    draft.attributes["output.value"] = _text(d["content"])
                if d.get("is_error"):
                    draft.error = "the tool reported an error"
                return

    def code_execution(self, event: Event) -> None:
        d = event.data
        language = str(d.get("language", ""))
        exit_code = d.get("exit_code")
        attrs = _attrs(openinference__span__kind="TOOL", gen_ai__operation__name="execute_tool",
                       gen_ai__tool__name="code_execution", gen_ai__agent__name=d.get("agent"),
                       tool__name="code_execution", isolane__code__language=language,
                       isolane__code__exit_code=exit_code, input__value=d.get("code"),
                       output__value=d.get("output"))
        draft = self.leaf(event, f"execute_code {language}", "code", attrs,
                          duration=float(d.get("duration_s") or 0.0))
        if exit_code != 0:
            draft.error = "the code did not run" if exit_code is None else f"exit code {exit_code}"

    def leaf(self, event: Event, name: str, kind: str, attrs: dict[str, AttrValue], *,
             duration: float | None) -> _Draft:
        """A span made by one event: it ends at the event after ``duration`` (``None``: not yet)."""
        attrs.update(_attrs(isolane__seq=event.seq, isolane__node__id=event.node_id))
        start = event.ts if duration is None else event.ts - max(duration, 0.0)
        return self.add(_Draft(name, kind, ids.seq_key(event.seq), self.home_of(event.node_id), start,
                               None if duration is None else event.ts, attrs))

    def span_event(self, event: Event) -> None:
        attrs: dict[str, AttrValue] = {
            f"isolane.{k}": v if isinstance(v, bool | int | float) else _text(v)
            for k, v in event.data.items() if v is not None}
        attrs["isolane.seq"] = event.seq
        draft = self.drafts[self.home_of(event.node_id)]
        if len(draft.events) < MAX_SPAN_EVENTS:
            draft.events.append(SpanEventSpec(event.type, event.ts, attrs))
        else:
            draft.attributes["isolane.dropped_events"] = int(draft.attributes.get("isolane.dropped_events", 0)) + 1


def spans_of(run: RunLike, events: Iterable[Event]) -> list[SpanSpec]:
    """The spans of ``run`` from its stored ``events`` (in seq order), parents before children."""
    b = _Builder(run)
    ordered = sorted(events, key=lambda e: e.seq)
    first_ts = ordered[0].ts if ordered else run.created_at
    root = b.add(_Draft(f"run {run.workflow}", "run", ids.RUN_KEY, None, run.started_at or first_ts, None,
                        _attrs(openinference__span__kind="CHAIN", isolane__run__id=run.id,
                               isolane__workflow=run.workflow, input__value=run.task or None,
                               isolane__parent_run__id=run.parent_run_id,
                               isolane__branch_point_node=run.branch_point_node)))
    root.start = min(root.start, first_ts)
    for event in ordered:
        kind = event.type
        if kind == "run_started":
            b.run_started(event)
        elif kind == "dag_created":
            for node in event.data.get("nodes", ()):
                b.node(str(node["id"]), event.ts, label=str(node.get("label") or ""),
                       node_type=str(node.get("node_type") or "step"), parent=node.get("parent_node_id"))
        elif kind == "dag_node_added" and event.node_id is not None:
            b.node(event.node_id, event.ts, label=str(event.data.get("label") or ""),
                   node_type=str(event.data.get("node_type") or "step"),
                   parent=event.data.get("parent_node_id"), meta=event.data.get("meta"))
        elif kind == "dag_node_update":
            b.node_update(event)
        elif kind == "llm_call":
            b.llm_call(event)
        elif kind == "tool_call":
            b.tool_call(event)
        elif kind == "tool_result":
            b.tool_result(event)
        elif kind == "code_execution":
            b.code_execution(event)
        elif kind in _TERMINAL_EVENTS:
            b.run_end = event.ts
            if kind == "run_completed" and event.data.get("result") is not None:
                root.attributes["output.value"] = _text(event.data["result"])
        elif kind in _SPAN_EVENT_TYPES:
            b.span_event(event)
    return _finish(b, run, ordered)


def _finish(b: _Builder, run: RunLike, ordered: Sequence[Event]) -> list[SpanSpec]:
    """Close what the run's end closes and turn the drafts into specs."""
    ended = b.run_end is not None or run.status not in _UNFINISHED
    run_end = b.run_end or run.ended_at or (ordered[-1].ts if ordered else run.created_at)
    root = b.drafts[ids.RUN_KEY]
    root.attributes["isolane.run.status"] = run.status
    if run.status in _ERROR_STATUSES:
        root.error = run.error or run.status
    trace = ids.trace_id(run.id)
    links: tuple[SpanLinkSpec, ...] = ()
    if run.parent_run_id:
        target = ids.node_key(run.branch_point_node) if run.branch_point_node else ids.RUN_KEY
        links = (SpanLinkSpec(ids.trace_id(run.parent_run_id), ids.span_id(run.parent_run_id, target),
                              {"isolane.link": "branched_from", "isolane.run.id": run.parent_run_id}),)
    specs = []
    for draft in b.drafts.values():
        end = draft.end
        if end is None and ended:
            end = max(run_end, draft.start)
        specs.append(SpanSpec(
            name=draft.name, kind=draft.kind, trace_id=trace, span_id=ids.span_id(run.id, draft.key),
            parent_span_id=None if draft.parent_key is None else ids.span_id(run.id, draft.parent_key),
            start=draft.start, end=end, attributes={**draft.attributes, "isolane.run.id": run.id,
                                                    "isolane.span.type": draft.kind},
            events=tuple(draft.events), links=links if draft.kind == "run" else (), error=draft.error))
    return specs
