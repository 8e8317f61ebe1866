"""``run_iter`` stepping through a chat in which a user proxy executes the assistant's code."""

import tempfile

from autogen import AssistantAgent, LLMConfig, UserProxyAgent
from autogen.coding import LocalCommandLineCodeExecutor

llm_config = LLMConfig({"api_type": "openai", "model": "gpt-4o-mini"})


def main(ctx, task, config):
    work_dir = tempfile.mkdtemp(dir=".")
    assistant = AssistantAgent(name="coder", llm_config=llm_config)
    user_proxy = UserProxyAgent(
        name="user_proxy", human_input_mode="NEVER", max_consecutive_auto_reply=2,
        code_execution_config={"executor": LocalCommandLineCodeExecutor(work_dir=work_dir)},
        is_termination_msg=lambda msg: "TERMINATE" in (msg.get("content") or ""),
    )
    seen = []
    for event in user_proxy.run_iter(assistant, message=task, max_turns=3):
        seen.append(type(event).__name__)
    return seen
