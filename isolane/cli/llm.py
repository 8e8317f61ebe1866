"""The LLM a CLI-started worker talks to: ``run-isolated --llm offline | --model M``, and again for
every command that (re)starts a stored run's workers (``resume``, ``branch``, ``play-from``, ``race``).

::

    run-isolated --llm offline   FakeLLM started here (this process), serving a built-in workflow's
                                 offline script; any other workflow's worker serves its own (the
                                 parent never imports a user's module)
                                 config["llm"] = {"model": "fake-model", "offline": true}   (stored)
                                 worker env $ISOLANE_OFFLINE_LLM_URL = its URL, $OPENAI_API_KEY = a dummy
    run-isolated --model M       config["llm"] = {"model": M, "base_url": --base-url or $OPENAI_BASE_URL}
                                 worker env $OPENAI_API_KEY = yours (required)
    neither                      the config as given; $OPENAI_API_KEY is passed on when config has an "llm"

    resume / branch / play-from / race RUN
        the run's (merged) config says offline ──▶ a new FakeLLM here, serving the workflow's script,
                                                    for as long as the command runs; its URL goes to
                                                    the new workers' environment, never the store
        it names a provider                     ──▶ $OPENAI_API_KEY is passed on again

The URL of an offline endpoint lives as long as the command that started it, so it is never
stored: a stored offline config says ``"offline": true`` and nothing that looks like an address.
A worker of an offline run that gets no URL (``isolane recover --resume``, ``isolane serve``, the
Python API) serves the script itself (:func:`isolane.workflows._llm.open_llm`). The scripts answer
from what a request holds, never from a counter, so a fresh endpoint answers a resumed or branched
run exactly as the first one did. Keys reach workers through their environment only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from isolane.cli.console import fail
from isolane.tracking.rows import RunRow

if TYPE_CHECKING:
    from isolane.references import CheckedRef

__all__ = [
    "BASE_URL_ENV",
    "BaseUrlOption",
    "LlmOption",
    "ModelOption",
    "check_config",
    "llm_for_run",
    "llm_for_stored_run",
]

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


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse a config that would store a key (``--config llm.api_key=...``): a usage error."""
    llm = config.get("llm")
    if isinstance(llm, Mapping) and "api_key" in llm:
        fail(f"--config llm.api_key would store your key with the run; set ${API_KEY_ENV} instead")


def _is_offline_endpoint(config: Mapping[str, Any]) -> bool:
    """Whether ``config["llm"]`` names an offline endpoint the caller must serve (not ``"offline"``,
    which the worker serves itself)."""
    llm = config.get("llm")
    return isinstance(llm, Mapping) and llm.get("offline") is True


@contextmanager
def _offline_endpoint(wf: CheckedRef) -> Iterator[dict[str, str]]:
    """The worker env for an offline run of ``wf`` until the block ends.

    A built-in workflow's script (isolane's own code) is served here by a FakeLLM; any other
    workflow's module is user code the parent never imports, so its worker serves the script
    itself (:mod:`isolane.worker.offline_llm`) and the env stays empty.
    """
    if wf.has_offline_script is False:
        fail(f"workflow {wf.name!r} ships no offline script (a module-level offline_script() beside "
             "it); run it with --model M instead")
    if wf.kind != "registered":
        yield {}
        return
    from isolane.offline.server import FakeLLM
    from isolane.workflow import builtin_workflows
    from isolane.workflows import OFFLINE_API_KEY, OFFLINE_URL_ENV, offline_script_for

    script = offline_script_for(builtin_workflows()[wf.name])
    if script is None:
        fail(f"workflow {wf.name!r} ships no offline script; run it with --model M instead")
    with FakeLLM(script) as server:
        yield {OFFLINE_URL_ENV: server.base_url, API_KEY_ENV: OFFLINE_API_KEY}


@contextmanager
def llm_for_run(wf: CheckedRef, config: Mapping[str, Any], *, llm: str | None, model: str | None,
                base_url: str | None) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """Prepare a new run's LLM; yield ``(config, worker environment additions)``.

    With ``llm="offline"`` a FakeLLM serving the workflow's offline script runs until the block
    ends. Bad combinations are usage errors (one ``error:`` line, exit 2).
    """
    from isolane.workflows import OFFLINE_MODEL, LlmSettings

    check_config(config)
    if llm is not None and llm != OFFLINE:
        fail(f"unknown --llm {llm!r}: use --llm {OFFLINE}, or --model M for a provider")
    if llm == OFFLINE:
        if base_url is not None:
            fail("--base-url cannot be combined with --llm offline (the offline endpoint is local)")
        settings = LlmSettings(model or OFFLINE_MODEL, offline=True)
        with _offline_endpoint(wf) as env:
            yield {**config, "llm": settings.as_config()}, env
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


@contextmanager
def llm_for_stored_run(row: RunRow, changes: Sequence[Mapping[str, Any]] = ({},)) -> Iterator[dict[str, str]]:
    """The worker environment for new workers of stored run ``row``, valid inside the block.

    ``changes`` are the config changes each new worker applies to ``row.config`` (one per branch
    or racer; ``({},)`` for a resume). When any resulting config names an offline endpoint, a
    FakeLLM serving the workflow's offline script runs until the block ends and its URL is in
    the environment; when any names a provider, ``$OPENAI_API_KEY`` is passed on.
    """
    configs = [{**row.config, **change} for change in changes]
    for change in changes:
        check_config(change)
    env: dict[str, str] = {}
    key = os.environ.get(API_KEY_ENV)
    if key and any(c.get("llm") not in (None, OFFLINE) and not _is_offline_endpoint(c) for c in configs):
        env[API_KEY_ENV] = key
    if not any(_is_offline_endpoint(c) for c in configs):
        yield env
        return
    # Checked, never imported here: a user's module serves its own script in its worker.
    from isolane.references import check_workflow_ref

    wf = check_workflow_ref(str(row.meta.get("workflow_ref") or row.workflow))
    with _offline_endpoint(wf) as offline_env:
        yield {**offline_env, **env}  # a provider key, when one is needed, serves the endpoint too
