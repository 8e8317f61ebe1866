"""AG2 programs written the way AG2's docs write them: no isolane code inside.

Each module's ``main(ctx, task, config)`` is only the entry point a workflow needs; the program
ignores ``ctx``. The LLM endpoint comes from ``OPENAI_BASE_URL``/``OPENAI_API_KEY``, as for any
OpenAI-compatible server.
"""
