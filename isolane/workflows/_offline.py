"""The offline scripts of the built-in workflows, and how any workflow's script is found.

A script (:class:`isolane.testing.Script`) answers each request from what the conversation holds
-- the role marker in the system message, the marker or exit code in the last message -- never
from a counter, so a run's answers do not depend on timing or on what ran before it.

``planning-control`` offline, whatever the task::

    planner     submit_plan([researcher: sum 1..100 with calculate,
                             engineer: check it by brute force into result.json,
                             executor: print result.json]) → TERMINATE
    step_1      researcher: calculate("100 * (100 + 1) / 2") → summary
    step_2      engineer: a script with an off-by-one bug → exit 1 → gives up  (step fails)
    step_2.redo_1  engineer: the fixed script → exit 0 → read_file(result.json) → summary
    step_3      executor: runs the step's code → exit 0

``one-shot`` offline: the engineer writes primes.txt, checks it with read_file, and is done.

A workflow that is not built in can ship its own: a module-level ``offline_script()`` beside the
workflow function (see :func:`offline_script_for`).

Resume and branch: every command that restarts an offline run's workers serves the script from a
*new* FakeLLM, with nothing to fast-forward. A resumed run skips its completed steps
(``ctx.step``) and runs the interrupted one again from its instruction; a branch runs from its
node. Both get the answers the first run got because each answer is a function of the request.
A script built from reply sequences or ``times`` caps would start those over instead.
"""

from __future__ import annotations

from typing import Any, Final

from isolane.offline.script import Rule, Script, text, tool_call
from isolane.worker.offline_llm import offline_script_of
from isolane.workflow import WorkflowDef
from isolane.workflows._agents import MARK_PLAN, MARK_REDO, MARK_STEP, ROLES

__all__ = ["OFFLINE_PLAN", "offline_script_for", "one_shot_script", "planning_control_script"]

_PLANNER: Final = ROLES["planner"].marker
_ENGINEER: Final = ROLES["engineer"].marker
_RESEARCHER: Final = ROLES["researcher"].marker

#: The plan the offline planner submits.
OFFLINE_PLAN: Final[list[dict[str, Any]]] = [
    {"agent": "researcher", "task": "Work out the sum of the integers from 1 to 100 with the calculate tool."},
    {"agent": "engineer", "task": "Write and run a Python script that checks that sum by brute force "
                                  "and saves it to result.json."},
    {"agent": "executor", "task": "Show the saved result.",
     "code": "import json\n\nprint('result.json:', json.load(open('result.json')))"},
]

_BUGGY_CHECK: Final = """```python
# filename: check_sum.py
import json

total = sum(range(1, 100))
assert total == 5050, f"expected 5050, got {total}"
with open("result.json", "w") as fh:
    json.dump({"sum": total}, fh)
print("sum checked:", total)
```"""

_FIXED_CHECK: Final = _BUGGY_CHECK.replace("range(1, 100)", "range(1, 101)")


def planning_control_script() -> Script:
    """The offline answers of ``planning-control`` (a failed step and its redo included)."""
    return Script(
        Rule(system=_PLANNER, last=MARK_PLAN, reply=tool_call("submit_plan", {"steps": OFFLINE_PLAN})),
        Rule(system=_PLANNER, reply=text("The plan has three steps: research, check in code, show. TERMINATE")),
        Rule(system=_RESEARCHER, last=MARK_STEP,
             reply=tool_call("calculate", {"expression": "100 * (100 + 1) / 2"})),
        Rule(system=_RESEARCHER, reply=text("The sum of the integers 1..100 is 100 * 101 / 2 = 5050. TERMINATE")),
        Rule(system=_ENGINEER, last=MARK_REDO, reply=text(_FIXED_CHECK)),
        Rule(system=_ENGINEER, last=MARK_STEP, reply=text(_BUGGY_CHECK)),
        Rule(system=_ENGINEER, last="exitcode: 0", reply=tool_call("read_file", {"path": "result.json"})),
        Rule(system=_ENGINEER, last="exitcode:",
             reply=text("The check failed and I could not fix it in this attempt. TERMINATE")),
        Rule(system=_ENGINEER, reply=text('check_sum.py confirmed the sum; result.json holds {"sum": 5050}. '
                                          "TERMINATE")),
    )


_PRIMES: Final = """```python
# filename: primes.py
primes = [n for n in range(2, 50) if all(n % d for d in range(2, int(n ** 0.5) + 1))]
with open("primes.txt", "w") as fh:
    fh.write(" ".join(map(str, primes)) + "\\n")
print(len(primes), "primes below 50")
```"""


def one_shot_script() -> Script:
    """The offline answers of ``one-shot``: write a file, run it, check it with a tool, finish."""
    return Script(
        Rule(system=_ENGINEER, last=MARK_STEP, reply=text(_PRIMES)),
        Rule(system=_ENGINEER, last="exitcode: 0", reply=tool_call("read_file", {"path": "primes.txt"})),
        Rule(system=_ENGINEER, last="exitcode:", reply=text("The script failed. TERMINATE")),
        Rule(system=_ENGINEER, reply=text("primes.txt lists the 15 primes below 50. TERMINATE")),
    )


def offline_script_for(wf: WorkflowDef) -> Script | None:
    """The offline script of a workflow: its module's ``offline_script()``, or ``None``.

    Built-in workflows define one; a user's workflow file may define one too (a function
    returning an :class:`~isolane.testing.Script`, or a mapping in the form of
    :meth:`Script.from_dict`).
    """
    return offline_script_of(wf.func)
