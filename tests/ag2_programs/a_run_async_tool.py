"""``ConversableAgent.a_run()`` with an async tool, processed with ``await response.process()``."""

import asyncio

from autogen import ConversableAgent, LLMConfig

llm_config = LLMConfig({"api_type": "openai", "model": "gpt-4o-mini"})


async def fetch_stock_price(symbol: str) -> str:
    """Fetch the latest stock price of a symbol."""
    await asyncio.sleep(0.01)
    return f"{symbol}: 187.20 USD"


analyst = ConversableAgent(
    name="analyst",
    system_message="You are a market analyst. Use fetch_stock_price for prices.",
    llm_config=llm_config,
    functions=[fetch_stock_price],
)


async def main(ctx, task, config):
    response = await analyst.a_run(message=task, max_turns=2, user_input=False)
    await response.process()
    return await response.summary
