"""The agents of the built-in workflows: one role registry, one factory, the prompts they share.

::

    open_team(llm, work_dir, roles=("planner", "engineer", ...))
      ├─ one LLM agent per role in ROLES (system message, tools it may call)
      ├─ executor    no LLM: runs code blocks (LocalCommandLineCodeExecutor in work_dir) and
      │              every tool call the LLM agents make
      └─ controller  no LLM: the workflow's voice; it opens each step's chat with an instruction

Roles are looked up by name (no ``if role == ...``). The offline scripts in
:mod:`isolane.workflows._offline` recognise each role by its ``marker`` at the start of its system
message, and a step's instruction by :data:`MARK_STEP` / :data:`MARK_REDO`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

from autogen import ConversableAgent, LLMConfig, register_function
from autogen.coding import LocalCommandLineCodeExecutor

from isolane.errors import ConfigError
from isolane.workflows._tools import Toolbox

__all__ = [
    "EXECUTOR",
    "MARK_PLAN",
    "MARK_REDO",
    "MARK_STEP",
    "ROLES",
    "Role",
    "Team",
    "open_team",
    "quote_output",
]

#: The name of the agent that runs code and tools (a plan step may name it too).
EXECUTOR: Final = "executor"
#: Starts the instruction of every step (the offline scripts key on it).
MARK_STEP: Final = "Your step:"
#: Starts the part of an instruction that reports a failed earlier attempt.
MARK_REDO: Final = "Previous attempt failed:"
#: Starts the planner's instruction.
MARK_PLAN: Final = "Make a plan"

_TERMINATE_RULE: Final = ("When you are done, reply with a one-paragraph summary of what you did "
                          "and found, ending with the word TERMINATE.")


@dataclass(frozen=True, slots=True)
class Role:
    """An LLM agent of the built-in workflows: its system message and the tools it may call."""

    marker: str
    instructions: str
    tools: tuple[str, ...] = ()

    @property
    def system_message(self) -> str:
        return f"{self.marker}. {self.instructions}"


ROLES: Final[Mapping[str, Role]] = {
    "planner": Role(
        "You are the planner",
        "Break the task into a short plan of concrete steps. Each step names the agent that does "
        "it: 'researcher' (reasons and calculates with tools), 'engineer' (writes Python code "
        "that the executor runs) or 'executor' (runs the Python code given in the step's 'code'). "
        "Submit the plan by calling the submit_plan tool, then reply TERMINATE.",
    ),
    "engineer": Role(
        "You are the engineer",
        "Write one complete Python script per reply in a ```python code block; the executor runs "
        "it in the working directory and reports the exit code and output. Fix the script when it "
        f"fails. You can inspect files with read_file and list_files. {_TERMINATE_RULE}",
        tools=("read_file", "list_files"),
    ),
    "researcher": Role(
        "You are the researcher",
        "Answer the step by reasoning; use the calculate tool for any arithmetic and read_file / "
        f"list_files to look at the working directory. {_TERMINATE_RULE}",
        tools=("calculate", "read_file", "list_files"),
    ),
}


def quote_output(text: str, limit: int = 2000) -> str:
    """Text from a run (code output, an error) made safe to quote inside an instruction: no code
    fences (the executor would run them) and at most ``limit`` characters."""
    text = text.replace("```", "'''").strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


@dataclass(slots=True)
class Team:
    """The agents of one run. ``agents`` holds the LLM agents by role and the executor."""

    agents: dict[str, ConversableAgent]
    executor: ConversableAgent
    controller: ConversableAgent
    toolbox: Toolbox

    def agent(self, name: str) -> ConversableAgent:
        """The agent called ``name``; :class:`ConfigError` names the ones there are."""
        try:
            return self.agents[name]
        except KeyError:
            raise ConfigError(f"no agent {name!r} in this workflow; agents: {', '.join(sorted(self.agents))}") from None

    def register_tool(self, function: Callable[..., Any], *, callers: Sequence[str], description: str) -> None:
        """Let ``callers`` call ``function``; the executor runs it."""
        for name in callers:
            register_function(function, caller=self.agent(name), executor=self.executor,
                              description=description)


def _is_termination(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, str) and content.rstrip().endswith("TERMINATE")


@contextmanager
def _python_on_path() -> Iterator[SimpleNamespace]:
    """A directory whose ``python`` is this interpreter, for AG2's code executor.

    AG2 runs Python code blocks with ``python`` from ``PATH``; on a fresh machine that may not
    exist (only ``python3``) or may be another interpreter than the one isolane runs on.
    """
    with tempfile.TemporaryDirectory(prefix="isolane-python-") as bin_dir:
        os.symlink(sys.executable, Path(bin_dir) / "python")
        yield SimpleNamespace(env_exe=sys.executable, bin_path=bin_dir)


@contextmanager
def open_team(llm: LLMConfig, work_dir: Path, *, roles: Sequence[str], code_timeout: int = 60) -> Iterator[Team]:
    """Build the agents for ``roles`` (keys of :data:`ROLES`), the executor and the controller.

    Valid inside the ``with`` block (the executor's interpreter link lives that long). Raises
    :class:`ConfigError` for an unknown role.
    """
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ConfigError(f"unknown role(s) {', '.join(unknown)}; roles: {', '.join(sorted(ROLES))}")
    toolbox = Toolbox(work_dir)
    with _python_on_path() as python:
        executor = ConversableAgent(
            EXECUTOR, llm_config=False, human_input_mode="NEVER", default_auto_reply="",
            code_execution_config={"executor": LocalCommandLineCodeExecutor(
                work_dir=work_dir, timeout=code_timeout, virtual_env_context=python)})
        controller = ConversableAgent("controller", llm_config=False, human_input_mode="NEVER",
                                      default_auto_reply="")
        agents: dict[str, ConversableAgent] = {EXECUTOR: executor}
        for name in roles:
            role = ROLES[name]
            agents[name] = ConversableAgent(name, system_message=role.system_message, llm_config=llm,
                                            human_input_mode="NEVER", is_termination_msg=_is_termination)
        team = Team(agents, executor, controller, toolbox)
        for name in roles:
            for tool in ROLES[name].tools:
                function = toolbox.functions[tool]
                team.register_tool(function, callers=[name], description=(function.__doc__ or tool).strip())
        yield team
