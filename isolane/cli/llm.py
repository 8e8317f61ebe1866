"""``run-isolated --llm offline | --model M [--base-url URL]``: the LLM a run talks to.

::

    --llm offline      FakeLLM started here (this process), serving the workflow's offline script
                       config["llm"] = {"model": "fake-model", "base_url": <its URL>, "offline": true}
                       worker env OPENAI_API_KEY = a dummy key
    --model M          config["llm"] = {"model": M, "base_url": --base-url or $OPENAI_BASE_URL}
                       worker env OPENAI_API_KEY = yours (required)
    neither            the config as given; $OPENAI_API_KEY is passed on when config has an "llm"

The key reaches the worker through its environment only; the stored config never holds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Final

import typer

from isolane.cli.console import fail
from isolane.workflow import WorkflowDef

__all__ = ["BASE_URL_ENV", "BaseUrlOption", "LlmOption", "ModelOption", "llm_for_run"]

BASE_URL_ENV: Final = "OPENAI_BASE_URL"
# The same names as isolane.workflows, which is imported only when a run needs it (it imports AG2,
# which takes seconds; the read-only commands should not pay for that).
API_KEY_ENV: Final = "OPENAI_API_KEY"
OFFLINE: Final = "offline"

LlmOption = Annotated[str | None, typer.Option(
    "--llm", metavar="offline",
    help="'offline': answer from the workflow's deterministic script on a local endpoint (no key).")]
ModelOption = Annotated[str | None, typer.Option(
    "--model", metavar="M",
    help=f"Talk to model M of an OpenAI-compatible provider (needs ${API_KEY_ENV}); "
         "with --llm offline, the model name the local endpoint answers as.")]
BaseUrlOption = Annotated[str | None, typer.Option(
    "--base-url", metavar="URL", help=f"The provider's base URL for --model (default ${BASE_URL_ENV}).")]


def _check_config(config: Mapping[str, Any]) -> None:
    llm = config.get("llm")
    if isinstance(llm, Mapping) and "api_key" in llm:
        fail(f"--config llm.api_key would store your key with the run; set ${API_KEY_ENV} instead")


@contextmanager
def llm_for_run(wf: WorkflowDef, config: Mapping[str, Any], *, llm: str | None, model: str | None,
                base_url: str | None) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """Prepare the run's LLM; yield ``(config, worker environment additions)``.

    With ``llm="offline"`` a FakeLLM serving the workflow's offline script runs until the block
    ends. Bad combinations are usage errors (one ``error:`` line, exit 2).
    """
    from isolane.testing import FakeLLM
    from isolane.workflows import (
        OFFLINE_API_KEY,
        OFFLINE_MODEL,
        LlmSettings,
        offline_script_for,
    )

    _check_config(config)
    if llm is not None and llm != OFFLINE:
        fail(f"unknown --llm {llm!r}: use --llm {OFFLINE}, or --model M for a provider")
    if llm == OFFLINE:
        if base_url is not None:
            fail("--base-url cannot be combined with --llm offline (the offline endpoint is local)")
        script = offline_script_for(wf)
        if script is None:
            fail(f"workflow {wf.name!r} ships no offline script (a module-level offline_script() beside "
                 "it); run it with --model M instead")
        with FakeLLM(script) as server:
            settings = LlmSettings(model or OFFLINE_MODEL, server.base_url, offline=True)
            yield {**config, "llm": settings.as_config()}, {API_KEY_ENV: OFFLINE_API_KEY}
        return
    key = os.environ.get(API_KEY_ENV)
    if model is not None:
        if not key:
            fail(f"--model needs ${API_KEY_ENV} set (it reaches the worker only, never the store); "
                 f"or use --llm {OFFLINE}")
        url = base_url or os.environ.get(BASE_URL_ENV) or None
        settings = LlmSettings.from_config({"model": model, "base_url": url})  # ConfigError: exit 2
        yield {**config, "llm": settings.as_config()}, {API_KEY_ENV: key}
        return
    if base_url is not None:
        fail("--base-url needs --model M")
    yield dict(config), ({API_KEY_ENV: key} if key and "llm" in config else {})
