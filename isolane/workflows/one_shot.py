"""``one-shot``: an engineer writes Python, the executor runs it, until the engineer is done.

::

    node solve                  controller: the task ─▶ chat of engineer ⇄ executor
      solve/engineer#1          the engineer writes a ```python block (or calls read_file /
      solve/executor#1          list_files); the executor runs it in the run's directory
      solve/engineer#2          ... until the engineer ends with TERMINATE
    [solve.redo_1]              a failed attempt (last code run exited non-zero, or no TERMINATE
                                within max_turns) is redone up to max_redos times (default 0)
    result                      {"summary", "exit_codes", "turns", "attempts", "files"}

Config: ``llm`` (see :mod:`isolane.workflows._llm`), ``max_turns`` (12), ``max_redos`` (0).
"""

from __future__ import annotations

from typing import Any, Final

from isolane.worker.context import RunContext
from isolane.workflow import DagTemplate, TemplateNode, workflow
from isolane.workflows._agents import MARK_REDO, MARK_STEP, open_team, quote_output
from isolane.workflows._llm import open_llm
from isolane.workflows._offline import one_shot_script
from isolane.workflows._steps import (
    StepResult,
    attempt_with_redos,
    positive_int,
    run_step,
)

__all__ = ["TEMPLATE", "offline_script", "one_shot"]

TEMPLATE: Final = DagTemplate(nodes=(TemplateNode("solve", label="write and run code", node_type="step"),))

#: The deterministic script ``--llm offline`` serves for this workflow.
offline_script: Final = one_shot_script


@workflow("one-shot", template=TEMPLATE, defaults={"max_turns": 12, "max_redos": 0},
          description="An engineer writes Python code and an executor runs it until the task is done.")
def one_shot(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Solve the task with one engineer writing code and one executor running it."""
    max_turns = positive_int(config, "max_turns", 12)
    max_redos = positive_int(config, "max_redos", 0, minimum=0)
    with open_llm(config, script=one_shot_script) as llm, \
            open_team(llm, ctx.work_dir, roles=("engineer",)) as team:
        ctx.phase("solve")

        def attempt(node_id: str, previous: str | None) -> StepResult:
            instruction = f"{MARK_STEP} {task}"
            if previous is not None:
                instruction += f"\n\n{MARK_REDO} {quote_output(previous)}. Avoid what went wrong."
            return run_step(ctx, node_id, lead=team.agent("engineer"), team=team, instruction=instruction,
                            max_turns=max_turns)

        outcome = attempt_with_redos(ctx, "solve", attempt, max_redos=max_redos, parent=None)
        files = [name for name, _ in team.toolbox.files()]
    return {**outcome, "files": files}
