"""``planning-control``: a planner makes a structured plan, a controller runs it step by step.

::

    phase planning   node planning              planner ⇄ executor: planner calls submit_plan(steps)
                       planning/planner#1 ...   (a registered tool: validated JSON steps)
                     + nodes step_1..step_N under control, next edges between them (pending)
    phase control    node control
                       step_1 (researcher)      each step: a chat of the agent it names and the
                       step_2 (engineer)        executor; one sub-node per turn (step_2/engineer#1)
                       step_2.redo_1 ◀┄┄failed  a failed step is redone up to max_redos times,
                       step_3 (executor)        each redo a branch_point node
    result           {"plan": [...], "steps": [{"node", "agent", "summary", "attempts", ...}]}

Config: ``llm`` (see :mod:`isolane.workflows._llm`), ``max_redos`` (1), ``max_steps`` (6),
``max_turns`` per step (10). Node ids are the same in every run: ``planning``, ``control``,
``step_<n>``, ``step_<n>.redo_<r>``, ``<node>/<agent>#<turn>``.
"""


import logging
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, Literal, Self

from pydantic import BaseModel, Field, ValidationError, model_validator

from isolane.worker.context import RunContext
from isolane.workflow import DagTemplate, TemplateEdge, TemplateNode, workflow
from isolane.workflows._agents import (
    EXECUTOR,
    MARK_PLAN,
    MARK_REDO,
    MARK_STEP,
    Team,
    open_team,
    quote_output,
)
from isolane.workflows._llm import open_llm
from isolane.workflows._offline import planning_control_script
from isolane.workflows._steps import (
    StepFailed,
    StepResult,
    attempt_with_redos,
    positive_int,
    run_step,
)

__all__ = ["TEMPLATE", "PlanStep", "offline_script", "planning_control"]

logger = logging.getLogger(__name__)

TEMPLATE: Final = DagTemplate(
    nodes=(TemplateNode("planning", label="make the plan", node_type="planning"),
           TemplateNode("control", label="run the plan", node_type="control")),
    edges=(TemplateEdge("planning", "control"),),
)

#: The deterministic script ``--llm offline`` serves for this workflow.
offline_script: Final = planning_control_script


class PlanStep(BaseModel):
    """One step of a plan: the agent that does it and what to do (``code`` for executor steps)."""

    agent: Literal["engineer", "researcher", "executor"]
    task: Annotated[str, Field(min_length=1, max_length=2000)]
    code: str | None = None

    @model_validator(mode="after")
    def _executor_steps_carry_code(self) -> Self:
        if self.agent == EXECUTOR and not (self.code or "").strip():
            raise ValueError("an executor step must give the Python code to run in 'code'")
        return self


def _plan_tool(max_steps: int, steps_out: list[PlanStep]) -> Callable[..., str]:
    """The ``submit_plan`` tool: validates the plan and keeps it in ``steps_out``."""

    def submit_plan(steps: Annotated[list[PlanStep], "the plan's steps, in order"]) -> str:
        """Record the plan: a list of steps, each {agent, task, code (executor steps only)}."""
        if not 1 <= len(steps) <= max_steps:
            raise ValueError(f"a plan has 1 to {max_steps} steps, got {len(steps)}")
        steps_out[:] = steps
        return f"Plan recorded with {len(steps)} steps."

    return submit_plan


def _plan(ctx: RunContext, team: Team, task: str, *, max_steps: int, max_turns: int) -> list[dict[str, Any]]:
    steps: list[PlanStep] = []
    submit_plan = _plan_tool(max_steps, steps)
    team.register_tool(submit_plan, callers=["planner"], description=(submit_plan.__doc__ or "").strip())
    instruction = (f"{MARK_PLAN} of at most {max_steps} steps for this task:\n\n{task}\n\n"
                   "Submit it with the submit_plan tool.")
    result = run_step(ctx, "planning", lead=team.agent("planner"), team=team, instruction=instruction,
                      max_turns=max_turns)
    if not steps:
        raise StepFailed("planning", "the planner submitted no valid plan with submit_plan"
                         + ("" if result.ok else f" ({result.reason})"))
    return [step.model_dump(exclude_none=True) for step in steps]


def _instruction(task: str, number: int, plan: Sequence[PlanStep], done: Sequence[dict[str, Any]],
                 previous_failure: str | None) -> str:
    step = plan[number - 1]
    parts = [f"This is step {number} of {len(plan)} of a plan for the task:\n{task}"]
    if done:
        parts.append("Results of the earlier steps:\n" + "\n".join(
            f"- step {i} ({plan[i - 1].agent}): {quote_output(d.get('summary', ''), 500)}"
            for i, d in enumerate(done, 1)))
    parts.append(f"{MARK_STEP} {step.task}")
    if step.code:
        parts.append(f"Run this code:\n```python\n{step.code}\n```")
    if previous_failure is not None:
        parts.append(f"{MARK_REDO} {quote_output(previous_failure)}. Avoid what went wrong.")
    return "\n\n".join(parts)


@workflow("planning-control", template=TEMPLATE, defaults={"max_redos": 1, "max_steps": 6, "max_turns": 10},
          description="A planner makes a plan; each step runs with the agent it names; failed steps are redone.")
def planning_control(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Plan the task, then run each step with the agent it names, redoing failed steps."""
    max_redos = positive_int(config, "max_redos", 1, minimum=0)
    max_steps = positive_int(config, "max_steps", 6)
    max_turns = positive_int(config, "max_turns", 10)
    with open_llm(config, script=planning_control_script) as llm, \
            open_team(llm, ctx.work_dir, roles=("planner", "engineer", "researcher")) as team:
        ctx.phase("planning")
        raw_plan = ctx.step("planning", _plan, ctx, team, task, max_steps=max_steps, max_turns=max_turns)
        try:
            plan = [PlanStep.model_validate(step) for step in raw_plan]
        except ValidationError as exc:  # only a corrupted saved plan can get here
            raise StepFailed("planning", f"the saved plan is invalid: {exc}") from exc
        ids = [f"step_{n}" for n in range(1, len(plan) + 1)]
        for step_id, step in zip(ids, plan, strict=True):
            ctx.add_node(step_id, label=step.task[:80], parent="control", agent=step.agent, task=step.task)
        ctx.phase("control")
        done: list[dict[str, Any]] = []
        with ctx.node("control"):
            for number, (step_id, step) in enumerate(zip(ids, plan, strict=True), 1):

                def attempt(node_id: str, previous: str | None, *, number: int = number,
                            step: PlanStep = step) -> StepResult:
                    return run_step(ctx, node_id, lead=team.agent(step.agent), team=team, max_turns=max_turns,
                                    instruction=_instruction(task, number, plan, done, previous))

                outcome = attempt_with_redos(ctx, step_id, attempt, max_redos=max_redos, parent="control",
                                             before=ids[number:number + 1])
                done.append({**outcome, "agent": step.agent, "task": step.task})
    return {"plan": raw_plan, "steps": done}
