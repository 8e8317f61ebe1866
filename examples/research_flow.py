"""A research workflow written the way a user writes one: plain AG2, no tracking code.

    run-isolated "How spread out are the measurements?" \
        --workflow examples/research_flow.py:main --llm offline      # or --model gpt-4o-mini

Two steps, each a DAG node (the only isolane calls here):

* ``research`` -- a group chat, AG2 choosing who speaks next: the analyst loads the measurements
  with a tool, the coder writes Python to compute statistics, the runner executes tools and code;
  the analyst states the finding.
* ``report`` -- a writer turns the finding into ``report.md``.

isolane records every message, tool call and result, code execution, speaker change and LLM call
(speaker selection included) with its cost, attributed to the step it happened in. The LLM comes
from ``config["llm"]`` (``{"model": ..., "base_url": ...}``); the key from ``OPENAI_API_KEY``.
``offline_script()`` is what ``--llm offline`` answers with: the command serves it on a local
endpoint and tells the worker where (``$ISOLANE_OFFLINE_LLM_URL``; the URL is never stored).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autogen import (
    ConversableAgent,
    GroupChat,
    GroupChatManager,
    LLMConfig,
    register_function,
)
from autogen.coding import LocalCommandLineCodeExecutor

__all__ = ["MEASUREMENTS", "load_measurements", "main", "offline_script", "research", "write_report"]

MEASUREMENTS = [9.8, 10.1, 10.4, 9.6, 10.0, 10.3, 9.9, 10.2]


def load_measurements() -> str:
    """Return the measurements of the study as a JSON list of numbers."""
    return json.dumps(MEASUREMENTS)


def llm_config_from(config: dict[str, Any]) -> LLMConfig:
    llm = config["llm"]
    entry = {"api_type": "openai", "model": llm["model"]}
    base_url = llm.get("base_url") or (os.environ.get("ISOLANE_OFFLINE_LLM_URL")
                                       if llm.get("offline") else None)
    if base_url:
        entry["base_url"] = base_url
    return LLMConfig(entry)


def research(task: str, llm_config: LLMConfig, work_dir: Path) -> str:
    """The group chat: returns the analyst's finding."""
    analyst = ConversableAgent(
        "analyst", llm_config=llm_config, human_input_mode="NEVER",
        system_message="You are the analyst. Load the data with load_measurements, ask the coder for "
                       "statistics, then state the finding and end with TERMINATE.",
        description="Loads data with tools and states the finding.")
    coder = ConversableAgent(
        "coder", llm_config=llm_config, human_input_mode="NEVER",
        system_message="You are the coder. Write one Python code block computing what the analyst "
                       "needs; print the results.",
        description="Writes Python code.")
    runner = ConversableAgent(
        "runner", llm_config=False, human_input_mode="NEVER",
        code_execution_config={"executor": LocalCommandLineCodeExecutor(work_dir=work_dir)},
        description="Runs code blocks and tool calls; never writes anything itself.")
    register_function(load_measurements, caller=analyst, executor=runner,
                      description="Return the measurements as a JSON list.")
    chat = GroupChat(agents=[analyst, coder, runner], messages=[], max_round=12)
    manager = GroupChatManager(chat, llm_config=llm_config,
                               is_termination_msg=lambda m: "TERMINATE" in (m.get("content") or ""))
    runner.initiate_chat(manager, message=task)
    finding = next((m["content"] for m in reversed(chat.messages)
                    if m.get("name") == "analyst" and m.get("content")), "")
    return finding.replace("TERMINATE", "").strip()


def write_report(task: str, finding: str, llm_config: LLMConfig, work_dir: Path) -> Path:
    """A writer turns the finding into report.md."""
    writer = ConversableAgent("writer", llm_config=llm_config, human_input_mode="NEVER",
                              system_message="You are the writer. Turn the finding into a short report.")
    editor = ConversableAgent("editor", llm_config=False, human_input_mode="NEVER")
    result = editor.initiate_chat(writer, message=f"Question: {task}\nFinding: {finding}", max_turns=1)
    path = work_dir / "report.md"
    path.write_text(f"# {task}\n\n{result.summary}\n")
    return path


def main(ctx: Any, task: str, config: dict[str, Any]) -> dict[str, Any]:
    llm_config = llm_config_from(config)
    with ctx.node("research"):
        finding = research(task, llm_config, ctx.work_dir)
    with ctx.node("report"):
        report = write_report(task, finding, llm_config, ctx.work_dir)
    return {"finding": finding, "report": report.name}


def offline_script() -> Any:
    """The answers ``--llm offline`` gives: decided by the conversation itself, never by a count."""
    from isolane.testing import Rule, Script, text, tool_call

    def next_speaker(request: Any) -> Any:
        said = request.messages[-2] if len(request.messages) > 1 else {}  # [-1] is AG2's question
        content = said.get("content") or ""
        if "```" in content:
            return text("runner")  # code to execute
        if said.get("role") == "tool":
            return text("coder")  # the data is loaded
        return text("analyst")  # the task, or the code's output

    return Script(
        Rule(speaker_selection=True, reply=next_speaker),
        Rule(system="You are the analyst", last="exitcode:",
             reply=text("The 8 measurements have mean 10.0375 and standard deviation 0.2669: "
                        "they are tightly spread. TERMINATE")),
        Rule(system="You are the analyst", reply=tool_call("load_measurements")),
        Rule(system="You are the coder",
             reply=text("```python\nimport json, statistics\n"
                        f"data = {MEASUREMENTS!r}\n"
                        "stats = {'mean': statistics.mean(data), 'stdev': statistics.stdev(data)}\n"
                        "json.dump(stats, open('stats.json', 'w'))\n"
                        "print(stats)\n```")),
        Rule(system="You are the writer",
             reply=text("The measurements cluster tightly around 10.04 (standard deviation 0.27).")),
    )
