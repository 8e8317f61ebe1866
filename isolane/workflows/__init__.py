"""isolane's built-in workflows, registered by name when this package is imported.

=====================  ==============================================================================
``one-shot``           an engineer writes Python, an executor runs it, until the engineer is done
``planning-control``   a planner makes a structured plan; each step runs with the agent it names;
                       a failed step is redone (``max_redos``), each redo a ``branch_point`` node
=====================  ==============================================================================

Both read their LLM from ``config["llm"]`` (``"offline"``, ``{"model", "offline": true}``, or
``{"model", "base_url"}`` with the key in ``$OPENAI_API_KEY``) and ship a deterministic offline
script, so ``run-isolated TASK --workflow planning-control --llm offline`` runs real AG2 agents
with no API key, and ``isolane resume`` / ``branch`` / ``race`` continue such a run offline.
Neither contains tracking code beyond naming its DAG nodes: AG2 capture in the worker records
the rest.
"""

from isolane.workflows import one_shot, planning_control
from isolane.workflows._llm import (
    API_KEY_ENV,
    OFFLINE,
    OFFLINE_API_KEY,
    OFFLINE_MODEL,
    OFFLINE_URL_ENV,
    LlmSettings,
)
from isolane.workflows._offline import offline_script_for
from isolane.workflows._steps import StepFailed

__all__ = [
    "API_KEY_ENV",
    "OFFLINE",
    "OFFLINE_API_KEY",
    "OFFLINE_MODEL",
    "OFFLINE_URL_ENV",
    "LlmSettings",
    "StepFailed",
    "offline_script_for",
    "one_shot",
    "planning_control",
]
