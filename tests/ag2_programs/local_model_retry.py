"""A two-agent chat on a local model nobody prices, whose server answers 429 once."""

from autogen import ConversableAgent, LLMConfig

llm_config = LLMConfig({"api_type": "openai", "model": "llama3.1-local"})


def main(ctx, task, config):
    writer = ConversableAgent(name="writer", system_message="You write haiku.", llm_config=llm_config)
    reader = ConversableAgent(name="reader", llm_config=False, human_input_mode="NEVER")
    result = reader.initiate_chat(writer, message=task, max_turns=1)
    return result.summary
