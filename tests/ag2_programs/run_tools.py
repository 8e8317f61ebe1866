"""``ConversableAgent.run()`` with tools, then ``response.process()`` (AG2's recommended API)."""

from autogen import ConversableAgent, LLMConfig

llm_config = LLMConfig({"api_type": "openai", "model": "gpt-4o-mini"})


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"The weather in {city} is sunny, 22 degrees."


def get_time(city: str) -> str:
    """Get the local time in a city."""
    return f"It is 14:05 in {city}."


assistant = ConversableAgent(
    name="assistant",
    system_message="You are a travel assistant. Use the tools to answer.",
    llm_config=llm_config,
    functions=[get_weather, get_time],
)


def main(ctx, task, config):
    response = assistant.run(message=task, max_turns=3, user_input=False)
    response.process()
    return response.summary
