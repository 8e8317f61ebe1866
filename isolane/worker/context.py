"""What a workflow sees: the run context handed to ``main(ctx, task, config)`` in the worker.

The context is the workflow's only tracking surface: ``emit`` for its own events, ``phase`` and
``node`` for the DAG, and the paths it may write to. Framework capture (AG2) emits through the
same :class:`~isolane.worker.emitter.Emitter`, attributed to the node that is current.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isolane.errors import InvalidEvent
from isolane.schemas.payloads import RUNTIME_EVENT_TYPES
from isolane.worker.emitter import Emit, Emitter
from isolane.worker.human import HumanChannel
from isolane.worker.session import ResumeInfo, SessionState

if TYPE_CHECKING:
    from isolane.worker.files import FileScanner

__all__ = ["NodeEnd", "RunContext", "runtime_emit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeEnd:
    """Given to each ``ctx.on_node_end`` hook just before a node's final ``dag_node_update``."""

    node_id: str
    status: str

_current_node: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "isolane_current_node", default=None
)


class RunContext:
    """The handle a workflow receives as ``ctx``.

    Attributes: ``run_id``, ``work_dir`` (the run's own directory, also the working directory),
    ``task``, ``config``, ``attempt`` (1 for a first run, more after resumes), and ``cancelled``
    (a :class:`threading.Event` set when a cancel was requested).
    """

    def __init__(
        self,
        *,
        run_id: str,
        work_dir: Path,
        task: str,
        config: Mapping[str, Any],
        emitter: Emitter,
        attempt: int = 1,
        known_nodes: Mapping[str, str | None] | None = None,
        resume: ResumeInfo | None = None,
    ) -> None:
        self.run_id = run_id
        self.work_dir = work_dir
        self.task = task
        self.config = dict(config)
        self.attempt = attempt
        self.cancelled = threading.Event()
        #: The AG2 capture session while the workflow runs (``None`` without AG2); use
        #: ``ctx.capture.attach(agent)`` for agents created before the run started.
        self.capture: Any = None
        self._emitter = emitter
        self._emit = emitter.emit  # bound once: ctx.emit is a workflow's hot path
        #: Set when this worker continues an earlier attempt (``None`` on a first run).
        self.resume = resume
        #: Context variables saved in ``state_snapshot`` events; restored on resume.
        self.state = SessionState(resume.context if resume else None, resume.logs if resume else None)
        self._snapshot_lock = threading.Lock()
        self._last_snapshot_seq = resume.snapshot_seq if resume else 0
        self._phase: str | None = resume.phase if resume else None
        self._parent_of: dict[str, str | None] = dict(known_nodes or {})
        self._order: list[str] = list(self._parent_of)
        self._depth: dict[str, int] = {}
        for node_id in self._order:
            parent = self._parent_of[node_id]
            self._depth[node_id] = self._depth.get(parent, -1) + 1 if parent is not None else 0
        # AG2 runs some tools on bare threads that do not inherit contextvars: they fall back
        # to the node most recently entered anywhere in the process.
        self._last_entered: list[str] = []
        #: Questions to a person (see :mod:`isolane.worker.human`); ``ask``/``approve`` use it.
        self.human = HumanChannel(self._runtime_emit, current_node=lambda: self.current_node,
                                  flush=emitter.flush)
        #: Called before each node's ``completed``/``failed``/``cancelled`` update (file tracking).
        self.on_node_end: list[Callable[[NodeEnd], None]] = []
        #: The work dir's file tracker (``ctx.files.scan()`` reports changes now), if any.
        self.files: FileScanner | None = None

    # -- events ---------------------------------------------------------------------------------

    @property
    def current_node(self) -> str | None:
        """The innermost node being executed, or ``None``."""
        node = _current_node.get()
        if node is None and self._last_entered:
            return self._last_entered[-1]
        return node

    def emit(self, name: str, /, **data: Any) -> int:
        """Emit a workflow event of type ``custom`` named ``name``; return its ``seq``."""
        data["name"] = name
        node = _current_node.get()  # self.current_node, inlined: a workflow may emit a lot
        if node is None and self._last_entered:
            node = self._last_entered[-1]
        return self._emit("custom", data, node)

    def emit_event(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> int:
        """Emit a typed event (``isolane.schemas.payloads``: ``agent_message``, ``tool_call``,
        ``file_created`` ...); defaults to the current node.

        The runtime's own types (:data:`~isolane.schemas.payloads.RUNTIME_EVENT_TYPES`: the
        run's lifecycle and outcome, the DAG of ``ctx.node``, state snapshots, LLM calls and
        costs, questions to a person) are refused with :class:`~isolane.errors.InvalidEvent`:
        a workflow reports them through ``ctx.node``/``ctx.step``, ``ctx.snapshot``,
        ``ctx.ask`` and its return value, and AG2 capture records LLM calls.
        """
        if type_ in RUNTIME_EVENT_TYPES:
            raise InvalidEvent(
                f"event type {type_!r} belongs to isolane's runtime and cannot be emitted by a "
                "workflow: use ctx.node/ctx.step for the DAG, ctx.snapshot for state, ctx.ask for "
                "questions, return a value (or raise) for the outcome, or ctx.emit(name, ...) for "
                "an event of your own")
        return self._emitter.emit(type_, data, node_id if node_id is not None else self.current_node)

    def _runtime_emit(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> int:
        """The runtime's path into the emitter (any type), attributed to the current node."""
        return self._emitter.emit(type_, data, node_id if node_id is not None else self.current_node)

    def phase(self, name: str) -> None:
        """Enter phase ``name`` (emits ``phase_change``)."""
        if name == self._phase:
            return  # also true when a resumed run re-enters the phase it was in
        self._emitter.emit("phase_change", {"phase": name, "previous": self._phase}, self.current_node)
        self._phase = name

    @property
    def current_phase(self) -> str | None:
        return self._phase

    # -- session state --------------------------------------------------------------------------

    def log(self, name: str, item: Any) -> None:
        """Append ``item`` (JSON-serialisable, e.g. a chat message) to the named log."""
        self.state.append(name, item)

    def history(self, name: str) -> list[Any]:
        """The named log so far, including what earlier attempts saved."""
        return self.state.log(name)

    def snapshot(self, *, reason: str = "explicit") -> int | None:
        """Emit a ``state_snapshot`` with what changed since the last one; ``None`` if nothing did."""
        with self._snapshot_lock:
            delta = self.state.take_delta()
            if delta is None:
                return None
            delta["base_seq"] = self._last_snapshot_seq
            delta["reason"] = reason
            self._last_snapshot_seq = self._emitter.emit("state_snapshot", delta, self.current_node)
            return self._last_snapshot_seq

    def is_completed(self, node_id: str) -> bool:
        """Whether ``node_id`` completed in an earlier attempt of this run (resume)."""
        return self.resume is not None and self.resume.is_completed(node_id)

    def step(self, node_id: str, fn: Callable[..., Any], /, *args: Any, label: str | None = None,
             **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` as node ``node_id``, exactly once across resumes.

        A node that completed in an earlier attempt is not run again: its saved result is
        returned. The result must be JSON-serialisable; it is stored with the node.
        """
        if self.resume is not None and node_id in self.resume.completed:
            return self.resume.completed[node_id]
        holder: dict[str, Any] = {}
        with self.node(node_id, label=label, _result=holder):
            holder["result"] = fn(*args, **kwargs)
        return holder["result"]

    # -- human input ----------------------------------------------------------------------------

    def ask(self, prompt: str, *, timeout: float | None = None, default: str | None = None) -> str:
        """Ask a person (``human_input_request``) and wait for the text they answer.

        ``timeout`` defaults to ``RunSpec(human_timeout=...)``; when it passes, ``default`` is
        returned if given, else :class:`~isolane.worker.human.HumanInputTimeout` is raised.
        """
        return self.human.ask(prompt, timeout=timeout, default=default)

    def approve(self, prompt: str, *, timeout: float | None = None, default: bool | None = None) -> bool:
        """Ask a person to approve; ``True`` if they did (their text is in ``ctx.human.last_answer``)."""
        return self.human.approve(prompt, timeout=timeout, default=default)

    # -- DAG ------------------------------------------------------------------------------------

    def add_node(
        self,
        node_id: str,
        *,
        label: str | None = None,
        node_type: str = "step",
        parent: str | None = None,
        after: list[str] | None = None,
        edge_kind: str = "next",
        condition: str | None = None,
        before: list[str] | None = None,
        **meta: Any,
    ) -> None:
        """Declare a node (emits ``dag_node_added``) without running it; a no-op if it exists.

        Edges: ``after`` (default: the previous sibling, else the parent) -> this node, of
        ``edge_kind`` with ``condition``; this node -> each of ``before`` (``next``).
        """
        if node_id in self._depth:
            return
        depth = self._depth.get(parent, -1) + 1 if parent is not None else 0
        if after is None:
            siblings = [n for n in self._order if self._parent_of.get(n) == parent]
            after = siblings[-1:] if siblings else ([parent] if parent else [])
        self._depth[node_id] = depth
        self._order.append(node_id)
        self._parent_of[node_id] = parent
        data: dict[str, Any] = {"label": label or node_id, "node_type": node_type,
                                "parent_node_id": parent, "depth": depth, "after": after, "meta": meta}
        if edge_kind != "next" or condition is not None:
            data.update(edge_kind=edge_kind, condition=condition)
        if before:
            data["before"] = list(before)
        self._emitter.emit("dag_node_added", data, node_id)

    def _end_node(self, node_id: str, status: str) -> None:
        for hook in list(self.on_node_end):
            try:
                hook(NodeEnd(node_id, status))
            except Exception:  # a hook must not change the node's outcome
                log.exception("on_node_end hook %r failed for node %s", hook, node_id)

    @contextmanager
    def node(
        self,
        node_id: str,
        *,
        label: str | None = None,
        node_type: str = "step",
        parent: str | None = None,
        _result: dict[str, Any] | None = None,
        **meta: Any,
    ) -> Iterator[str]:
        """Run a block as DAG node ``node_id``: ``running`` on entry, ``completed`` or ``failed``.

        Nested blocks become sub-nodes (``parent_node_id``, ``depth``). Events emitted inside are
        attributed to the node. An exception marks the node ``failed`` and propagates.
        """
        if parent is None:
            parent = self.current_node
        self.add_node(node_id, label=label, node_type=node_type, parent=parent, **meta)
        self._emitter.emit("dag_node_update", {"status": "running"}, node_id)
        token = _current_node.set(node_id)
        self._last_entered.append(node_id)
        try:
            yield node_id
        except BaseException as exc:
            status = "failed" if isinstance(exc, Exception) else "cancelled"
            self._end_node(node_id, status)
            self._emitter.emit(
                "dag_node_update",
                {"status": status, "error": "".join(traceback.format_exception_only(exc)).strip()},
                node_id,
            )
            raise
        else:
            # State first: a resume that sees the node completed also sees what it saved.
            self._end_node(node_id, "completed")
            self.snapshot(reason="node")
            done: dict[str, Any] = {"status": "completed"}
            if _result is not None and "result" in _result:
                done["meta"] = {"result": _result["result"]}
            self._emitter.emit("dag_node_update", done, node_id)
        finally:
            _current_node.reset(token)
            try:
                self._last_entered.remove(node_id)
            except ValueError:
                pass


def runtime_emit(ctx: RunContext) -> Emit:
    """The emit of the worker's own parts (capture, file tracking): every event type, the
    runtime's included, attributed to the current node. Not for workflow code."""
    return ctx._runtime_emit
