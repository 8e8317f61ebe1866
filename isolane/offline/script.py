"""What the fake LLM answers: scripted replies, the rules that choose them, and token counting.

A :class:`Script` is an immutable description: ordered :class:`Rule` objects plus a default
:class:`Reply`. The server turns each request into a :class:`ChatRequest`, and the first rule that
matches (and still has replies left) answers it. Everything is deterministic: the same requests in
the same order get the same replies, ids and token counts.

AG2 never sends an agent's *name* to the model; what identifies an agent is its system message,
which AG2 sends first. Rules therefore match on a substring of the system message (put a unique
marker in each agent's ``system_message``), on the last message, and on the model.

AG2's group-chat speaker selection is an ordinary chat completion made by an internal
``speaker_selection_agent``; :func:`is_speaker_selection` recognises it by AG2 0.14's default
prompt phrases (``groupchat.py``: ``select_speaker_message_template``,
``SELECT_SPEAKER_PROMPT_TEMPLATE`` and the two re-query templates). Rules are either for ordinary
calls (the default) or for speaker selection (``speaker_selection=True``), never both, so that
the roles list AG2 puts in the selection prompt (which quotes every agent's description) cannot
trigger an agent's rule.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from isolane.errors import ConfigError

__all__ = [
    "SPEAKER_SELECTION_MARKERS",
    "ChatRequest",
    "Reply",
    "Rule",
    "Script",
    "ToolCallSpec",
    "count_tokens",
    "fail",
    "is_speaker_selection",
    "message_text",
    "text",
    "tool_call",
]

#: Phrases of AG2 0.14's default speaker-selection prompts (``autogen/agentchat/groupchat.py``).
SPEAKER_SELECTION_MARKERS: Final[tuple[str, ...]] = (
    "Then select the next role from",
    "You provided more than one name in your text, please return just the name of the next speaker",
    "You didn't choose a speaker.",
)

_AGENTLIST = re.compile(r"\[((?:'[^']*'(?:,\s*)?)+)\]")


def count_tokens(text: str) -> int:
    """The fake tokenizer: the number of whitespace-separated words in ``text``."""
    return len(text.split())


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one OpenAI chat message: its content (text parts of a list content) plus the
    names and arguments of its tool calls, joined by spaces."""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    for call in message.get("tool_calls") or ():
        function = call.get("function", {}) if isinstance(call, dict) else {}
        parts.append(str(function.get("name", "")))
        parts.append(str(function.get("arguments", "")))
    return " ".join(parts)


def is_speaker_selection(
    messages: Sequence[Mapping[str, Any]], markers: Iterable[str] = SPEAKER_SELECTION_MARKERS
) -> bool:
    """Whether a request is AG2's group-chat speaker selection (any marker in its first or last
    message)."""
    if not messages:
        return False
    ends = (message_text(messages[0]), message_text(messages[-1]))
    return any(marker in end for marker in markers for end in ends)


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    """One tool call in a scripted reply; ``id`` defaults to a per-server ``call_<n>``."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as the JSON text OpenAI sends."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer.

    ``status`` 200 answers with ``content`` and/or ``tool_calls`` (``finish_reason`` is
    ``"tool_calls"`` when there are tool calls, else ``"stop"``); any status >= 400 answers with an
    OpenAI-shaped error body carrying ``error``, and with ``retry_after_s`` set, a
    ``retry-after-ms`` header (the OpenAI SDK waits that long before it retries, instead of its
    own ~0.5-8 s backoff). ``latency_s`` delays this answer (added to the server's own latency).
    """

    content: str | None = None
    tool_calls: tuple[ToolCallSpec, ...] = ()
    status: int = 200
    error: str = "scripted failure"
    latency_s: float = 0.0
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.status != 200 and not 400 <= self.status <= 599:
            raise ConfigError(f"Reply.status must be 200 or an HTTP error (400-599), got {self.status}")
        if self.latency_s < 0:
            raise ConfigError("Reply.latency_s cannot be negative")
        if self.retry_after_s is not None and (self.retry_after_s < 0 or self.status == 200):
            raise ConfigError("Reply.retry_after_s is for error replies and cannot be negative")

    @property
    def is_error(self) -> bool:
        """Whether this reply is an HTTP error."""
        return self.status != 200


def text(content: str, *, latency_s: float = 0.0) -> Reply:
    """A plain assistant message."""
    return Reply(content=content, latency_s=latency_s)


def tool_call(
    name: str, arguments: Mapping[str, Any] | str | None = None, *, id: str | None = None,
    content: str | None = None,
) -> Reply:
    """An assistant message asking for one tool call (``finish_reason="tool_calls"``)."""
    return Reply(content=content, tool_calls=(ToolCallSpec(name, arguments or {}, id),))


def fail(status: int = 500, error: str = "scripted failure", *, retry_after_s: float | None = None) -> Reply:
    """An HTTP error answer (note: the OpenAI SDK retries 408/409/429/5xx by itself, after
    ``retry_after_s`` when given)."""
    return Reply(status=status, error=error, retry_after_s=retry_after_s)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat-completion request as rules see it."""

    model: str
    messages: tuple[Mapping[str, Any], ...]
    body: Mapping[str, Any]
    is_speaker_selection: bool

    @property
    def system(self) -> str:
        """The content of the first message if it is a system message, else ``""``."""
        if self.messages and self.messages[0].get("role") == "system":
            return message_text(self.messages[0])
        return ""

    @property
    def last(self) -> str:
        """The text of the last message (``""`` when there are none)."""
        return message_text(self.messages[-1]) if self.messages else ""

    @property
    def candidates(self) -> tuple[str, ...]:
        """For speaker selection: the agent names AG2 offered (its ``['a', 'b']`` list)."""
        for msg in (self.last, self.system):
            found = _AGENTLIST.search(msg)
            if found:
                return tuple(re.findall(r"'([^']*)'", found.group(1)))
        return ()

    @property
    def prompt_tokens(self) -> int:
        """Deterministic prompt size: per message, 1 for the role plus the words of its text."""
        return sum(1 + count_tokens(message_text(m)) for m in self.messages)


ReplySource = Reply | Sequence[Reply] | Callable[[ChatRequest], Reply]


@dataclass(frozen=True, slots=True)
class Rule:
    """Answer matching requests with ``reply``.

    A request matches when every given criterion holds: ``system`` is a substring of the system
    message, ``last`` a substring of the last message, ``model`` equals the requested model, and
    the request is a speaker selection exactly when ``speaker_selection`` is true.

    ``reply`` is one :class:`Reply` (used every time), a sequence (used in order; once used up the
    rule stops matching and later rules get their turn), or a callable building the reply from the
    :class:`ChatRequest`. ``times`` caps how often the rule may answer.
    """

    reply: ReplySource
    system: str | None = None
    last: str | None = None
    model: str | None = None
    speaker_selection: bool = False
    times: int | None = None

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 0:
            raise ConfigError("Rule.times cannot be negative")
        if not isinstance(self.reply, Reply) and not callable(self.reply):
            replies = tuple(self.reply)
            if not all(isinstance(r, Reply) for r in replies):
                raise ConfigError("Rule.reply must be a Reply, a sequence of Reply or a callable")
            object.__setattr__(self, "reply", replies)

    @classmethod
    def speakers(cls, *names: str) -> Rule:
        """Answer successive speaker-selection requests with these agent names, in order."""
        return cls(reply=tuple(text(n) for n in names), speaker_selection=True)

    def matches(self, request: ChatRequest) -> bool:
        """Whether the criteria hold for ``request`` (ignores how many replies are left)."""
        return (
            self.speaker_selection == request.is_speaker_selection
            and (self.system is None or self.system in request.system)
            and (self.last is None or self.last in request.last)
            and (self.model is None or self.model == request.model)
        )

    def limit(self) -> int | None:
        """How many times this rule may answer in total (``None``: unlimited)."""
        caps = [c for c in (self.times, None if not isinstance(self.reply, tuple) else len(self.reply))
                if c is not None]
        return min(caps) if caps else None

    def reply_for(self, request: ChatRequest, use: int) -> Reply:
        """The reply for the ``use``-th (0-based) answer of this rule."""
        if isinstance(self.reply, Reply):
            return self.reply
        if isinstance(self.reply, tuple):
            return self.reply[use]  # type: ignore[no-any-return]
        assert callable(self.reply)
        result = self.reply(request)
        if not isinstance(result, Reply):
            raise ConfigError(f"a Rule reply callable must return a Reply, got {type(result).__name__}")
        return result


@dataclass(frozen=True, slots=True)
class Script:
    """Ordered rules and a default; the first matching rule with replies left answers.

    Without a ``default``, an unmatched request gets HTTP 500 naming the request, so a test
    fails loudly instead of looping on an invented answer.
    """

    rules: tuple[Rule, ...] = ()
    default: Reply | None = None
    speaker_selection_markers: tuple[str, ...] = SPEAKER_SELECTION_MARKERS

    def __init__(
        self,
        *rules: Rule,
        default: Reply | str | None = None,
        speaker_selection_markers: Sequence[str] = SPEAKER_SELECTION_MARKERS,
    ) -> None:
        object.__setattr__(self, "rules", tuple(rules))
        object.__setattr__(self, "default", text(default) if isinstance(default, str) else default)
        object.__setattr__(self, "speaker_selection_markers", tuple(speaker_selection_markers))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Script:
        """Build a script from plain data (the CLI's ``--script`` JSON file).

        ``{"rules": [{"system": ..., "last": ..., "model": ..., "speaker_selection": bool,
        "times": int, "reply": R | [R, ...]}], "default": R}`` where ``R`` is a string (text), or
        ``{"content": ..., "tool_calls": [{"name", "arguments", "id"}], "status", "error",
        "latency_s", "retry_after_s"}``.
        """
        rules = []
        for raw in spec.get("rules", ()):
            raw = dict(raw)
            reply = raw.pop("reply")
            replies = [_reply_from(r) for r in reply] if isinstance(reply, list) else _reply_from(reply)
            rules.append(Rule(reply=replies, **raw))
        default = spec.get("default")
        return cls(*rules, default=None if default is None else _reply_from(default))


def _reply_from(raw: Any) -> Reply:
    if isinstance(raw, str):
        return text(raw)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a scripted reply must be a string or an object, got {raw!r}")
    calls = tuple(
        ToolCallSpec(c["name"], c.get("arguments", {}), c.get("id")) for c in raw.get("tool_calls", ())
    )
    retry_after = raw.get("retry_after_s")
    return Reply(
        content=raw.get("content"), tool_calls=calls, status=int(raw.get("status", 200)),
        error=str(raw.get("error", "scripted failure")), latency_s=float(raw.get("latency_s", 0.0)),
        retry_after_s=None if retry_after is None else float(retry_after),
    )


class ScriptRunner:
    """The mutable side of a :class:`Script` for one server: how often each rule has answered."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self._uses = [0] * len(script.rules)
        self._lock = threading.Lock()

    def make_request(self, body: Mapping[str, Any]) -> ChatRequest:
        """Wrap a request body (raises :class:`ConfigError` when it is not a chat request)."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ConfigError("'messages' must be a list of objects")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError("'model' must be a non-empty string")
        return ChatRequest(
            model=model, messages=tuple(messages), body=body,
            is_speaker_selection=is_speaker_selection(messages, self.script.speaker_selection_markers),
        )

    def answer(self, request: ChatRequest) -> Reply:
        """The reply for ``request`` (an HTTP-500 reply when nothing matches and no default)."""
        with self._lock:
            for index, rule in enumerate(self.script.rules):
                limit = rule.limit()
                if (limit is None or self._uses[index] < limit) and rule.matches(request):
                    use = self._uses[index]
                    self._uses[index] += 1
                    break
            else:
                if self.script.default is not None:
                    return self.script.default
                kind = "speaker-selection" if request.is_speaker_selection else "chat"
                return fail(500, f"no script rule matched this {kind} request (model {request.model!r}, "
                                 f"system {request.system[:80]!r}, last {request.last[:80]!r}); "
                                 "add a Rule or a default")
        return rule.reply_for(request, use)
