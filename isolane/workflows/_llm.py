"""Which LLM a built-in workflow talks to: read from ``config["llm"]``, the key from the environment.

::

    config["llm"] = "offline"                        the workflow serves its own offline script
                                                     (a FakeLLM inside the worker; Python API use)
    config["llm"] = {"model": M, "base_url": U}      an OpenAI-compatible endpoint (U optional);
                    (+ "offline": true when U is     the key comes from $OPENAI_API_KEY in the
                     a FakeLLM the CLI started)      worker's environment, never from config
         │
         └─ open_llm(config, script=...) ──▶ autogen.LLMConfig for every agent of the run

The run's config is stored; the key is not part of it. ``run-isolated --llm offline`` starts the
FakeLLM in the parent and passes its URL here and a dummy key in the worker's environment;
``--model M`` passes the caller's ``OPENAI_API_KEY`` the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from autogen import LLMConfig

from isolane.errors import ConfigError
from isolane.testing import FakeLLM, Script

__all__ = [
    "API_KEY_ENV",
    "OFFLINE",
    "OFFLINE_API_KEY",
    "OFFLINE_MODEL",
    "LlmSettings",
    "open_llm",
]

#: ``config["llm"]`` value (and ``--llm`` choice) for the scripted endpoint.
OFFLINE: Final = "offline"
#: The model name the offline endpoint answers as, unless another is asked for (it has no price).
OFFLINE_MODEL: Final = "fake-model"
#: The dummy key given to workers that talk to the offline endpoint.
OFFLINE_API_KEY: Final = "isolane-offline"
#: Where a worker finds the provider key (set through ``RunSpec(env=...)``, never in config).
API_KEY_ENV: Final = "OPENAI_API_KEY"

_HOW: Final = ("give config['llm'] = 'offline' or {'model': ..., 'base_url': ...} "
               "(run-isolated: --llm offline, or --model M with OPENAI_API_KEY set)")


@dataclass(frozen=True, slots=True)
class LlmSettings:
    """An OpenAI-compatible endpoint: ``model``, optional ``base_url``, and whether it is offline."""

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
    ``$OPENAI_API_KEY``. Raises :class:`ConfigError` when the LLM is missing or malformed, or
    when a non-offline endpoint has no key in the environment.
    """
    value = config.get("llm")
    if value is None:
        raise ConfigError(f"this workflow needs an LLM and config has no 'llm'; {_HOW}")
    if value == OFFLINE:
        with FakeLLM(script()) as llm:
            yield LlmSettings(OFFLINE_MODEL, llm.base_url, offline=True).ag2_config(OFFLINE_API_KEY)
        return
    settings = LlmSettings.from_config(value)
    api_key = os.environ.get(API_KEY_ENV) or (OFFLINE_API_KEY if settings.offline else None)
    if not api_key:
        raise ConfigError(f"{API_KEY_ENV} is not set in the worker's environment: pass it with "
                          f"RunSpec(env={{{API_KEY_ENV!r}: ...}}) (run-isolated --model passes yours)")
    yield settings.ag2_config(api_key)
