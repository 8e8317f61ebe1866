"""``run_group_chat`` with a ``DefaultPattern``, ``OnCondition`` handoffs and a tool."""

from autogen import ConversableAgent, LLMConfig
from autogen.agentchat import run_group_chat
from autogen.agentchat.group import (
    AgentTarget,
    OnCondition,
    StringLLMCondition,
    TerminateTarget,
)
from autogen.agentchat.group.patterns import DefaultPattern

llm_config = LLMConfig({"api_type": "openai", "model": "gpt-4o-mini"})


def lookup_order(order_id: str) -> str:
    """Look up the status of an order."""
    return f"Order {order_id} shipped yesterday."


triage = ConversableAgent(name="triage", system_message="You are the triage agent. Route the request.",
                          llm_config=llm_config)
support = ConversableAgent(name="support", system_message="You are the order support agent.",
                           llm_config=llm_config, functions=[lookup_order])

triage.handoffs.add_llm_conditions([
    OnCondition(target=AgentTarget(support), condition=StringLLMCondition("The customer asks about an order.")),
])
support.handoffs.set_after_work(TerminateTarget())

user = ConversableAgent(name="user", human_input_mode="NEVER")


def main(ctx, task, config):
    pattern = DefaultPattern(initial_agent=triage, agents=[triage, support], user_agent=user,
                             group_after_work=TerminateTarget())
    response = run_group_chat(pattern=pattern, messages=task, max_rounds=10)
    response.process()
    return response.summary
