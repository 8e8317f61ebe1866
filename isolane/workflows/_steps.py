"""One step of a built-in workflow: an AG2 group chat the controller steers, a DAG node per turn.

::

    with ctx.node("step_3"):                                   (the caller's node)
      run_step(ctx, "step_3", lead=engineer, team=team, instruction=...)
        controller ──initiate_chat(instruction)──▶ GroupChatManager([engineer, executor])
        GroupChat.speaker_selection_method = _Turns.select      (no LLM call: the plan decides)
           select(last_speaker) ─ closes the node of the turn that ended (completed)
                                ─ picks the next speaker:  lead wrote code / called a tool → executor
                                                           executor answered               → lead
                                                           (an executor-led step ends after it ran)
                                ─ opens "step_3/<agent>#<n>" (node_type "agent"); AG2's events
                                  during the turn (LLM call, message, tool call, code execution,
                                  handoff) are attributed to it by capture
        the chat ends: the lead's message ends with TERMINATE, no next speaker, or max_turns
      → StepResult(ok, reason, summary, exit_codes); the caller raises StepFailed when not ok

    attempt_with_redos(ctx, "step_3", run, max_redos=1)
        step_3 ──(failed)──▶ step_3.redo_1 [branch_point, conditional edge] ──▶ next step
        each attempt runs once across resumes (ctx.step); failed attempts are counted in ctx.state

Messages of every chat are appended to the session log ``chat`` (saved by state snapshots).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson
from autogen import Agent, ConversableAgent, GroupChat, GroupChatManager
from autogen.coding import MarkdownCodeExtractor

from isolane.errors import ConfigError, IsolaneError
from isolane.worker.context import RunContext
from isolane.workflows._agents import Team

__all__ = [
    "CHAT_LOG",
    "StepFailed",
    "StepResult",
    "attempt_with_redos",
    "positive_int",
    "run_step",
]

logger = logging.getLogger(__name__)

#: The session log every step's chat messages are appended to.
CHAT_LOG: Final = "chat"
_EXIT_CODE: Final = re.compile(r"^exitcode: (-?\d+)")
_EXTRACTOR: Final = MarkdownCodeExtractor()


class StepFailed(IsolaneError):
    """A step ended without doing its job; ``step`` is its node id, ``reason`` says why."""

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"{step}: {reason}")


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a step's chat came to. ``summary`` is the lead's last words (TERMINATE removed), or
    the executor's last output in an executor-led step; ``exit_codes`` those of its code runs."""

    ok: bool
    reason: str
    summary: str
    turns: int
    exit_codes: tuple[int, ...] = ()

    def as_data(self) -> dict[str, Any]:
        """JSON-safe form (a node's saved result)."""
        data = asdict(self)
        data["exit_codes"] = list(self.exit_codes)
        return data


def positive_int(config: Mapping[str, Any], key: str, default: int, *, minimum: int = 1) -> int:
    """``config[key]`` as an int of at least ``minimum``; :class:`ConfigError` states the rule."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config[{key!r}] must be a whole number >= {minimum}, got {value!r}")
    return value


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _wants_executor(message: Mapping[str, Any]) -> bool:
    """Whether a lead's message asks for the executor: a tool call or a code block."""
    if message.get("tool_calls") or message.get("function_call"):
        return True
    return bool(_EXTRACTOR.extract_code_blocks(_text(message)))


def _jsonable(message: Mapping[str, Any]) -> dict[str, Any]:
    return dict(orjson.loads(orjson.dumps(message, default=repr, option=orjson.OPT_NON_STR_KEYS)))


@dataclass(slots=True)
class _Turns:
    """The speaker-selection method of one step's chat: picks speakers, opens a node per turn."""

    ctx: RunContext
    step_id: str
    lead: ConversableAgent
    executor: ConversableAgent
    counts: Counter[str] = field(default_factory=Counter)
    turns: int = 0
    _open: AbstractContextManager[str] | None = None
    _logged: int = 0

    def select(self, last_speaker: Agent, chat: GroupChat) -> Agent | None:
        self.end(chat)
        following = self._following(last_speaker, chat)
        if following is not None:
            self._start(following)
        return following

    def _following(self, last_speaker: Agent, chat: GroupChat) -> Agent | None:
        if last_speaker is self.executor:
            return None if self.lead is self.executor else self.lead
        if last_speaker is self.lead and chat.messages and _wants_executor(chat.messages[-1]):
            return self.executor
        return self.lead  # the instruction was given, or the lead is not done yet

    def _start(self, agent: Agent) -> None:
        self.counts[agent.name] += 1
        self.turns += 1
        n = self.counts[agent.name]
        node = self.ctx.node(f"{self.step_id}/{agent.name}#{n}", label=f"{agent.name} turn {n}",
                             node_type="agent", parent=self.step_id, agent=agent.name)
        node.__enter__()
        self._open = node

    def end(self, chat: GroupChat, exc: BaseException | None = None) -> None:
        """Close the open turn (``failed`` with ``exc``) after logging the messages it added."""
        for message in chat.messages[self._logged:]:
            self.ctx.log(CHAT_LOG, {"step": self.step_id, **_jsonable(message)})
        self._logged = len(chat.messages)
        node, self._open = self._open, None
        if node is None:
            return
        if exc is None:
            node.__exit__(None, None, None)
        else:
            node.__exit__(type(exc), exc, exc.__traceback__)


def run_step(ctx: RunContext, step_id: str, *, lead: ConversableAgent, team: Team, instruction: str,
             max_turns: int) -> StepResult:
    """Run one step's chat inside node ``step_id`` (the caller has entered it); never raises
    :class:`StepFailed` itself -- the caller decides what failure means for it.

    The step succeeds when the lead ends with TERMINATE (an executor-led step: when the executor
    ran code) and the step's last code execution, if any, exited 0.
    """
    executor = team.executor
    members: list[Agent] = [lead] if lead is executor else [lead, executor]
    turns = _Turns(ctx, step_id, lead, executor)
    chat = GroupChat(agents=members, messages=[], max_round=max_turns + 1,
                     speaker_selection_method=turns.select, allow_repeat_speaker=True)
    manager = GroupChatManager(chat, llm_config=False, is_termination_msg=lambda m: _text(m).rstrip().endswith("TERMINATE"))
    try:
        team.controller.initiate_chat(manager, message=instruction, clear_history=True)
    except BaseException as exc:  # a cancel too: the open turn ends with it, then it propagates
        turns.end(chat, exc)
        raise
    turns.end(chat)
    return _outcome(chat.messages, lead=lead, executor=executor, turns=turns.turns, max_turns=max_turns)


def _outcome(messages: Sequence[Mapping[str, Any]], *, lead: Agent, executor: Agent, turns: int,
             max_turns: int) -> StepResult:
    by_lead = [m for m in messages if m.get("name") == lead.name]
    by_executor = [m for m in messages if m.get("name") == executor.name]
    codes = tuple(int(found.group(1)) for m in by_executor if (found := _EXIT_CODE.match(_text(m))))
    last_lead = _text(by_lead[-1]) if by_lead else ""
    if lead is executor:
        summary = last_lead
        finished, missing = bool(codes), "the executor found no code block to run"
    else:
        summary = last_lead.rstrip().removesuffix("TERMINATE").strip()
        finished = last_lead.rstrip().endswith("TERMINATE")
        missing = f"the {lead.name} did not finish (no TERMINATE) within {max_turns} turns"
    if not finished:
        return StepResult(False, missing, summary, turns, codes)
    if codes and codes[-1] != 0:
        return StepResult(False, f"the last code execution exited {codes[-1]}", summary, turns, codes)
    return StepResult(True, "done", summary, turns, codes)


def attempt_with_redos(
    ctx: RunContext,
    step_id: str,
    run: Callable[[str, str | None], StepResult],
    *,
    max_redos: int,
    parent: str | None,
    before: Sequence[str] = (),
) -> dict[str, Any]:
    """Run step ``step_id`` and, while it fails, up to ``max_redos`` redos of it.

    ``run(node_id, previous_failure)`` runs one attempt inside its node and returns its result.
    Redo ``r`` is node ``<step_id>.redo_<r>`` of type ``branch_point`` under ``parent``, with a
    conditional edge from the attempt that failed and ``next`` edges to ``before``. Each attempt
    runs once across resumes. Returns the successful attempt's result plus ``node`` and
    ``attempts``; raises :class:`StepFailed` when every attempt failed.
    """
    failures_key = f"{step_id}.failures"
    failures: list[str] = list(ctx.state.get(failures_key, []))
    for redo in range(max_redos + 1):
        node_id = step_id if redo == 0 else f"{step_id}.redo_{redo}"
        if redo < len(failures) and not ctx.is_completed(node_id):
            continue  # this attempt failed in an earlier worker of the run
        if redo > 0:
            source = step_id if redo == 1 else f"{step_id}.redo_{redo - 1}"
            ctx.add_node(node_id, label=f"redo {redo} of {step_id}", node_type="branch_point",
                         parent=parent, after=[source], edge_kind="conditional",
                         condition=f"{source} failed", before=list(before), branch_name=f"redo_{redo}",
                         source_node_id=source, reason=failures[-1])
        previous = failures[-1] if failures else None
        try:
            result: dict[str, Any] = ctx.step(node_id, _attempt, run, node_id, previous)
        except StepFailed as exc:
            failures.append(exc.reason)
            ctx.state[failures_key] = failures
            logger.info("%s failed (%s); %d redo(s) left", node_id, exc.reason, max_redos - redo)
            continue
        return {**result, "node": node_id, "attempts": redo + 1}
    plural = "redo" if max_redos == 1 else "redos"
    raise StepFailed(step_id, f"failed after {max_redos} {plural}: {failures[-1]}")


def _attempt(run: Callable[[str, str | None], StepResult], node_id: str, previous: str | None) -> dict[str, Any]:
    result = run(node_id, previous)
    if not result.ok:
        raise StepFailed(node_id, result.reason)
    return result.as_data()
