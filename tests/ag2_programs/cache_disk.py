"""Three chats sharing one ``Cache.disk()``; the third repeats the first question."""

from autogen import Cache, ConversableAgent, LLMConfig

llm_config = LLMConfig({"api_type": "openai", "model": "gpt-4o-mini"})


def main(ctx, task, config):
    teacher = ConversableAgent(name="teacher", system_message="You are a patient teacher.", llm_config=llm_config)
    student = ConversableAgent(name="student", llm_config=False, human_input_mode="NEVER")
    questions = ["What is photosynthesis?", "Why is the sky blue?", "What is photosynthesis?"]
    answers = []
    with Cache.disk(cache_seed=42, cache_path_root=".cache") as cache:
        for question in questions:
            result = student.initiate_chat(teacher, message=question, max_turns=1, cache=cache)
            answers.append(result.summary)
    return answers
