"""The payload of every event type: one msgspec Struct per type, and the :data:`PAYLOADS` registry.

An event's ``data`` (see :mod:`isolane.schemas.envelope`) has the shape :data:`PAYLOADS` declares
for its ``type``. Extra keys are kept (forward compatibility); missing or mistyped declared keys
make the event invalid (:func:`validate_payload`). Stored type strings never change once released:
add, don't rename.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from isolane.errors import InvalidEvent

__all__ = [
    "EVENT_TYPES",
    "HIDDEN_ANSWER",
    "HUMAN_EVENT_TYPES",
    "HUMAN_REQUEST",
    "HUMAN_RESPONSE",
    "PAYLOADS",
    "RUNTIME_EVENT_TYPES",
    "TERMINAL_EVENT_TYPES",
    "AgentMessage",
    "CodeExecution",
    "CostUpdate",
    "Custom",
    "DagCreated",
    "DagNodeAdded",
    "DagNodeUpdate",
    "EdgeSpec",
    "ErrorPayload",
    "FileDeleted",
    "FileEvent",
    "Handoff",
    "Heartbeat",
    "HumanInputRequest",
    "HumanInputResponse",
    "LlmCall",
    "LlmRetry",
    "NodeSpec",
    "NodeStatus",
    "Output",
    "Payload",
    "PhaseChange",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "StateSnapshot",
    "ToolCall",
    "ToolResult",
    "validate_payload",
]

NodeStatus = Literal["pending", "running", "completed", "failed", "skipped", "cancelled"]


class Payload(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every payload: unknown keys are allowed (and kept in storage)."""


# -- run lifecycle ---------------------------------------------------------------------------------


class RunStarted(Payload):
    workflow: str
    task: str = ""
    attempt: int = 1
    pid: int = 0
    #: The worker's host name (with ``pid``: where recovery finds a worker nobody recorded).
    host: str = ""
    preloaded: bool = False
    resumed_from_seq: int = 0


class RunCompleted(Payload):
    result: Any = None
    duration_s: float = 0.0


class RunFailed(Payload):
    error: str
    error_type: str = ""
    traceback: str = ""


class RunCancelled(Payload):
    reason: str = ""


class Heartbeat(Payload):
    rss_bytes: int = 0
    cpu_s: float = 0.0


class PhaseChange(Payload):
    phase: str
    previous: str | None = None


class ErrorPayload(Payload):
    message: str
    error_type: str = ""
    traceback: str = ""


class Output(Payload):
    stream: Literal["stdout", "stderr"]
    text: str


class Custom(Payload):
    name: str


# -- DAG -------------------------------------------------------------------------------------------


class NodeSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    label: str = ""
    node_type: str = "step"
    parent_node_id: str | None = None
    depth: int = 0


class EdgeSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    source: str
    target: str
    kind: str = "next"
    condition: str | None = None


class DagCreated(Payload):
    nodes: list[NodeSpec]
    edges: list[EdgeSpec] = []


class DagNodeAdded(Payload):
    label: str = ""
    node_type: str = "step"
    parent_node_id: str | None = None
    depth: int = 0
    #: Incoming edges ``source -> this node``, of ``edge_kind`` (``"conditional"`` with a
    #: ``condition`` for a redo's branch point).
    after: list[str] = []
    edge_kind: str = "next"
    condition: str | None = None
    #: Outgoing ``next`` edges ``this node -> target`` (to nodes declared earlier).
    before: list[str] = []
    meta: dict[str, Any] = {}


class DagNodeUpdate(Payload):
    status: NodeStatus
    error: str | None = None
    meta: dict[str, Any] = {}


# -- agents ----------------------------------------------------------------------------------------


class AgentMessage(Payload):
    sender: str
    content: Any = None
    recipient: str | None = None
    role: str | None = None
    silent: bool = False


class Handoff(Payload):
    to_agent: str
    from_agent: str | None = None
    reason: str | None = None


class ToolCall(Payload):
    tool: str
    call_id: str | None = None
    agent: str | None = None
    arguments: Any = None


class ToolResult(Payload):
    call_id: str | None = None
    tool: str | None = None
    agent: str | None = None
    content: Any = None
    is_error: bool = False


class CodeExecution(Payload):
    language: str
    exit_code: int | None
    code: str = ""
    output: str = ""
    agent: str | None = None
    #: How long the execution took (a span's start is ``ts - duration_s``); 0.0 when unknown.
    duration_s: float = 0.0


class LlmCall(Payload):
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    cost_source: str
    total_tokens: int = 0
    duration_s: float = 0.0
    cached: bool = False
    agent: str | None = None


class LlmRetry(Payload):
    """One attempt of an LLM request that failed and that the client retries by itself (the
    OpenAI SDK retries 408/409/429/5xx and connection errors). ``status`` is ``None`` when no
    answer came (timeout, connection error); ``endpoint`` is the request path only (no host, no
    query); ``agent`` and ``model`` name who was calling, when capture knows."""

    endpoint: str
    status: int | None = None
    reason: str = ""
    retry_in_s: float = 0.0
    agent: str | None = None
    model: str | None = None


class CostUpdate(Payload):
    """The worker's running totals after one more ``llm_call``: tokens are billed tokens (cache
    hits left out), ``total_cost`` sums the priced calls (0.0 when none is priced: read it with
    ``calls - unpriced_calls``, as :mod:`isolane.tracking.cost` does)."""

    total_cost: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unpriced_calls: int = 0
    calls: int = 0
    cached_calls: int = 0


class FileEvent(Payload):
    """A version of a file in the run's work dir: ``path`` relative to it (``/``-separated),
    ``version`` counting 1, 2, … per path; ``stored`` when its bytes are in the blob store."""

    path: str
    size: int
    sha256: str
    version: int = 1
    phase: str | None = None
    agent: str | None = None
    stored: bool = True


class FileDeleted(Payload):
    """A tracked file that no longer exists; ``version`` continues the path's numbering."""

    path: str
    version: int
    phase: str | None = None
    agent: str | None = None


class StateSnapshot(Payload):
    """What only the worker knows, as a delta against its previous snapshot (``base_seq``).

    ``context`` holds the context variables set since then (a key set to ``None`` is kept as
    ``None``; ``removed`` lists deleted keys); ``logs`` the items appended to each named log
    (conversation messages) since then. Folding every snapshot of a run in seq order gives its
    latest state; saving one costs O(what changed), not O(history).
    """

    base_seq: int = 0
    context: dict[str, Any] = {}
    removed: list[str] = []
    logs: dict[str, list[Any]] = {}
    reason: str = "node"


class HumanInputRequest(Payload):
    request_id: str
    prompt: str
    agent: str | None = None
    kind: str = "text"


class HumanInputResponse(Payload):
    """Recorded by the worker when a request was answered (or timed out: ``timed_out``)."""

    request_id: str
    text: str | None = None
    timed_out: bool = False
    source: str | None = None


#: The payload shape of every event type. Stored type strings never change: add, don't rename.
PAYLOADS: Final[dict[str, type[Payload]]] = {
    "run_started": RunStarted,
    "run_completed": RunCompleted,
    "run_failed": RunFailed,
    "run_cancelled": RunCancelled,
    "heartbeat": Heartbeat,
    "phase_change": PhaseChange,
    "dag_created": DagCreated,
    "dag_node_added": DagNodeAdded,
    "dag_node_update": DagNodeUpdate,
    "agent_message": AgentMessage,
    "handoff": Handoff,
    "tool_call": ToolCall,
    "tool_result": ToolResult,
    "code_execution": CodeExecution,
    "llm_call": LlmCall,
    "llm_retry": LlmRetry,
    "cost_update": CostUpdate,
    "file_created": FileEvent,
    "file_modified": FileEvent,
    "file_deleted": FileDeleted,
    "output": Output,
    "state_snapshot": StateSnapshot,
    "human_input_request": HumanInputRequest,
    "human_input_response": HumanInputResponse,
    "error": ErrorPayload,
    "custom": Custom,
}

EVENT_TYPES: Final = frozenset(PAYLOADS)
TERMINAL_EVENT_TYPES: Final = frozenset({"run_completed", "run_failed", "run_cancelled"})
#: The event types only isolane's runtime writes: a run's lifecycle and outcome, the DAG that
#: ``ctx.node``/``ctx.step`` keep (a resume skips what it says completed), session state, the
#: LLM calls and costs capture records, and the questions to a person. A workflow's public
#: ``ctx.emit_event`` refuses them, so a workflow cannot forge its outcome or its bill by
#: accident; a hostile worker can still write raw records, which the parent checks against
#: how the process ended (see :mod:`isolane.schemas.outcome`).
RUNTIME_EVENT_TYPES: Final = frozenset({
    "run_started", *TERMINAL_EVENT_TYPES, "heartbeat", "dag_created", "dag_node_added",
    "dag_node_update", "state_snapshot", "llm_call", "llm_retry", "cost_update",
    "human_input_request", "human_input_response",
})
HUMAN_REQUEST: Final = "human_input_request"
HUMAN_RESPONSE: Final = "human_input_response"
#: The event types that carry human-input questions and answers.
HUMAN_EVENT_TYPES: Final = (HUMAN_REQUEST, HUMAN_RESPONSE)
#: What a password answer (or its default) is recorded as: its text never enters the log.
HIDDEN_ANSWER: Final = "***"

_PAYLOAD_DECODERS: Final = {name: msgspec.json.Decoder(cls) for name, cls in PAYLOADS.items()}


def validate_payload(type_: str, data: bytes | msgspec.Raw) -> Payload:
    """Decode and check ``data`` against the declared payload of ``type_``.

    Raises :class:`InvalidEvent` naming the rule broken.
    """
    decoder = _PAYLOAD_DECODERS.get(type_)
    if decoder is None:
        raise InvalidEvent(f"unknown event type {type_!r}", excerpt=bytes(data))
    try:
        return decoder.decode(data)
    except RecursionError:
        raise InvalidEvent(f"payload of {type_!r} is nested too deeply", excerpt=bytes(data)) from None
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"payload of {type_!r} is invalid: {exc}", excerpt=bytes(data)) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"payload of {type_!r} is not JSON: {exc}", excerpt=bytes(data)) from None
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 only when it builds the str
        raise InvalidEvent(f"payload of {type_!r} holds invalid UTF-8: {exc.reason} at byte "
                           f"{exc.start}", excerpt=bytes(data)) from None
