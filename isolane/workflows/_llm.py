"""Which LLM a built-in workflow talks to: read from ``config["llm"]``, the key from the environment.

::

    config["llm"] = "offline"                        the workflow serves its own offline script
                                                     (a FakeLLM inside the worker; Python API use)
    config["llm"] = {"model": M, "offline": true}    the offline script, served by whoever started
                                                     the worker: its URL in $ISOLANE_OFFLINE_LLM_URL
                                                     (the CLI's FakeLLM); without one, by a FakeLLM
                                                     inside the worker, as for "offline"
    config["llm"] = {"model": M, "base_url": U}      an OpenAI-compatible endpoint (U optional);
                                                     the key comes from $OPENAI_API_KEY in the
                                                     worker's environment, never from config
         │
         └─ open_llm(config, script=...) ──▶ autogen.LLMConfig for every agent of the run

The run's config is stored; neither the key nor an offline endpoint's URL is part of it (that
URL dies with the command that served it). ``run-isolated --llm offline`` and every command that
restarts an offline run's workers (``isolane resume``, ``branch``, ``play-from``, ``race``) start
the FakeLLM in the parent and pass its URL and a dummy key in the worker's environment;
``--model M`` passes the caller's ``OPENAI_API_KEY`` the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from autogen import LLMConfig

from isolane.errors import ConfigError
from isolane.offline.script import Script
from isolane.offline.server import FakeLLM
from isolane.settings import OFFLINE_LLM_URL_ENV, offline_llm_url

__all__ = [
    "API_KEY_ENV",
    "OFFLINE",
    "OFFLINE_API_KEY",
    "OFFLINE_MODEL",
    "OFFLINE_URL_ENV",
    "LlmSettings",
    "open_llm",
]

logger = logging.getLogger(__name__)

#: ``config["llm"]`` value (and ``--llm`` choice) for the scripted endpoint.
OFFLINE: Final = "offline"
#: The model name the offline endpoint answers as, unless another is asked for (it has no price).
OFFLINE_MODEL: Final = "fake-model"
#: The dummy key given to workers that talk to the offline endpoint.
OFFLINE_API_KEY: Final = "isolane-offline"
#: Where a worker of an offline run finds the endpoint its parent serves (environment only: the
#: URL lives as long as the command that started the server, so it is never stored).
OFFLINE_URL_ENV: Final = OFFLINE_LLM_URL_ENV
#: Where a worker finds the provider key (set through ``RunSpec(env=...)``, never in config).
API_KEY_ENV: Final = "OPENAI_API_KEY"

_HOW: Final = ("give config['llm'] = 'offline' or {'model': ..., 'base_url': ...} "
               "(run-isolated: --llm offline, or --model M with OPENAI_API_KEY set)")


@dataclass(frozen=True, slots=True)
class LlmSettings:
    """An OpenAI-compatible endpoint: ``model``, optional ``base_url``, and whether it is offline.

    An offline endpoint's address comes from ``$ISOLANE_OFFLINE_LLM_URL`` when the worker runs, not
    from ``base_url`` (a stored one is the address of a server that is gone).
    """

    model: str
    base_url: str | None = None
    offline: bool = False

    @classmethod
    def from_config(cls, value: Any) -> LlmSettings:
        """Parse ``config["llm"]`` when it is a mapping; raise :class:`ConfigError` with the rule."""
        if not isinstance(value, Mapping):
            raise ConfigError(f"config['llm'] must be 'offline' or a mapping, got {value!r}; {_HOW}")
        if "api_key" in value:
            raise ConfigError(f"config['llm'] must not hold an API key (the config is stored): set "
                              f"{API_KEY_ENV} in the worker's environment, e.g. RunSpec(env=...)")
        unknown = sorted(set(value) - {"model", "base_url", "offline"})
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)} in config['llm']; "
                              "known: model, base_url, offline")
        model, base_url = value.get("model"), value.get("base_url")
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"config['llm']['model'] must name a model, got {model!r}; {_HOW}")
        if base_url is not None and (not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))):
            raise ConfigError(f"config['llm']['base_url'] must be an http(s) URL, got {base_url!r}")
        return cls(model.strip(), base_url, bool(value.get("offline", False)))

    def as_config(self) -> dict[str, Any]:
        """The ``config["llm"]`` mapping for these settings (what is stored with the run)."""
        value: dict[str, Any] = {"model": self.model}
        if self.base_url is not None:
            value["base_url"] = self.base_url
        if self.offline:
            value["offline"] = True
        return value

    def ag2_config(self, api_key: str) -> LLMConfig:
        """The AG2 configuration every agent of the run shares."""
        entry: dict[str, Any] = {"api_type": "openai", "model": self.model, "api_key": api_key}
        if self.base_url is not None:
            entry["base_url"] = self.base_url
        return LLMConfig(entry)


@contextmanager
def open_llm(config: Mapping[str, Any], *, script: Callable[[], Script]) -> Iterator[LLMConfig]:
    """The AG2 configuration for this run's LLM, valid inside the ``with`` block.

    ``config["llm"] == "offline"`` serves ``script()`` from a FakeLLM in this process for the
    duration of the block. A mapping names an endpoint; its key is read from
    ``$OPENAI_API_KEY``. An offline mapping talks to ``$ISOLANE_OFFLINE_LLM_URL``, or, when the
    worker's starter gave none, serves ``script()`` here like ``"offline"``. Raises
    :class:`ConfigError` when the LLM is missing or malformed, or when a non-offline endpoint
    has no key in the environment.
    """
    value = config.get("llm")
    if value is None:
        raise ConfigError(f"this workflow needs an LLM and config has no 'llm'; {_HOW}")
    if value == OFFLINE:
        value = {"model": OFFLINE_MODEL, "offline": True}
    settings = LlmSettings.from_config(value)
    if settings.offline:
        # The fake endpoint checks no key: it gets the dummy one, never a real one.
        url = offline_llm_url()
        if url:
            yield dataclasses.replace(settings, base_url=url).ag2_config(OFFLINE_API_KEY)
            return
        logger.info("no offline endpoint in $%s: serving the offline script in this worker", OFFLINE_URL_ENV)
        with FakeLLM(script()) as llm:
            yield dataclasses.replace(settings, base_url=llm.base_url).ag2_config(OFFLINE_API_KEY)
        return
    api_key = os.environ.get(API_KEY_ENV)
    if not api_key:
        raise ConfigError(f"{API_KEY_ENV} is not set in the worker's environment: pass it with "
                          f"RunSpec(env={{{API_KEY_ENV!r}: ...}}) (run-isolated --model passes yours)")
    yield settings.ag2_config(api_key)
