"""The ``autogen.beta`` Agent with a tool: ``agent.ask`` then ``reply.ask`` on the same conversation."""

from autogen.beta import Agent
from autogen.beta.config import OpenAIConfig
from autogen.beta.tools import tool


@tool
def convert(amount: float, currency: str) -> str:
    """Convert an amount of euros into another currency."""
    return f"{amount * 1.1:.2f} {currency}"


agent = Agent(
    "converter",
    prompt="You are a currency converter. Use the convert tool.",
    config=OpenAIConfig("gpt-4o-mini"),
    tools=[convert],
)


async def main(ctx, task, config):
    reply = await agent.ask(task)
    shorter = await reply.ask("Say it in five words.")
    return [reply.body, shorter.body]
