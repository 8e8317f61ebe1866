"""Per-agent capture: the ``process_message_before_send`` hook and the code-executor wrapper.

::

    AG2 runtime logger ─ log_new_agent(agent) ─▶ Attacher.note_new(agent)   (agent half-built)
    any later callback ─────────────────────────▶ Attacher.settle()         (now attach it)
    CaptureSession.attach(agent) ───────────────▶ Attacher.attach(agent)
                                                     ├─ hook: silent sends ─▶ Translator.on_message
                                                     └─ agent._code_executor = CapturingCodeExecutor

AG2 calls ``log_new_agent`` from inside ``ConversableAgent.__init__``, before the agent has its
hook lists, so a new agent is only *noted*; it is attached at the next callback of any capture
channel (another agent's creation, its first received message, an LLM call, an IOStream event)
-- always before it can send anything of its own, except when its very first action is a
silent send. Everything is undone by :meth:`Attacher.detach_all`.

AG2's group chat creates two throw-away agents for every "auto" speaker selection
(``checking_agent`` and ``speaker_selection_agent``); their chat is internal and silent, so they
get only the LLM-request hooks (its LLM calls are captured by the runtime logger, its outcome by
the ``handoff`` event).

The LLM-request hooks (``safeguard_llm_inputs``/``safeguard_llm_outputs``, which AG2 calls right
before and after each LLM request, in the thread that makes it) change nothing: they name the
calling agent for :mod:`~isolane.capture.retries`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from isolane.capture.code import CapturingCodeExecutor
from isolane.capture.retries import note_caller
from isolane.capture.sink import Sink
from isolane.capture.translate import Translator
from isolane.errors import ConfigError

__all__ = ["INTERNAL_AGENT_NAMES", "Attacher"]

logger = logging.getLogger(__name__)

#: AG2's internal speaker-selection agents (``GroupChat._create_internal_agents``).
INTERNAL_AGENT_NAMES: Final = frozenset({"checking_agent", "speaker_selection_agent"})

HOOK: Final = "process_message_before_send"
LLM_INPUT_HOOK: Final = "safeguard_llm_inputs"
LLM_OUTPUT_HOOK: Final = "safeguard_llm_outputs"


@dataclass(slots=True)
class _Attachment:
    hooks: list[tuple[str, Callable[..., Any]]]
    wrapper: CapturingCodeExecutor | None


class Attacher:
    """Attaches capture to agents and detaches it again; thread-safe.

    ``on_activity`` runs on every callback that reaches capture (an agent noted or seen, a
    send, :meth:`settle`): the session uses it to follow AG2 into threads it starts.
    """

    def __init__(self, translator: Translator, sink: Sink, *, active: Callable[[], bool],
                 on_activity: Callable[[], None] = lambda: None) -> None:
        self._translator = translator
        self._sink = sink
        self._active = active
        self._on_activity = on_activity
        self._lock = threading.RLock()
        self._attached: weakref.WeakKeyDictionary[Any, _Attachment] = weakref.WeakKeyDictionary()
        self._pending: list[weakref.ref[Any]] = []

    # -- discovery --------------------------------------------------------------------------------

    def note_new(self, agent: Any) -> None:
        """An agent is being constructed (AG2's ``log_new_agent``): attach it once it is built."""
        with self._lock:
            try:
                self._pending.append(weakref.ref(agent))
            except TypeError:
                logger.debug("agent %r cannot be weakly referenced; not auto-attached", agent)
        self.settle()

    def seen(self, agent: Any) -> None:
        """An agent showed up in a callback: attach it if it is not yet (no-op for names)."""
        self.settle()
        if not isinstance(agent, str) and agent is not None:
            self.attach(agent, auto=True)

    def settle(self) -> None:
        """Attach every noted agent whose construction has got far enough."""
        self._on_activity()
        with self._lock:
            if not self._pending:
                return
            waiting: list[weakref.ref[Any]] = []
            for ref in self._pending:
                agent = ref()
                if agent is None:
                    continue
                if _is_built(agent):
                    self.attach(agent, auto=True)
                else:
                    waiting.append(ref)
            self._pending = waiting

    # -- attaching --------------------------------------------------------------------------------

    def attach(self, agent: Any, *, auto: bool = False) -> bool:
        """Hook ``agent``'s sends and wrap its code executor; idempotent.

        Returns whether the agent is attached. With ``auto`` (discovery), agents that cannot be
        hooked and AG2's internal speaker-selection agents are skipped quietly; otherwise an
        agent without hooks (not a ``ConversableAgent``) raises :class:`ConfigError`.
        """
        if not _is_built(agent):
            if auto:
                return False
            raise ConfigError(f"cannot attach {agent!r}: capture hooks need an AG2 ConversableAgent "
                              "(an object with register_hook and hook_lists)")
        name = str(getattr(agent, "name", ""))
        internal = auto and name in INTERNAL_AGENT_NAMES
        with self._lock:
            if agent in self._attached:
                return not internal
            hooks = self._llm_hooks(agent, name)
            wrapper = None
            if not internal:
                hooks.append((HOOK, self._make_hook()))
                wrapper = self._wrap_executor(agent, name)
            for method, hook in hooks:
                agent.register_hook(method, hook)
            self._attached[agent] = _Attachment(hooks, wrapper)
        logger.debug("capture attached to agent %r", name)
        return not internal

    def _llm_hooks(self, agent: Any, name: str) -> list[tuple[str, Callable[..., Any]]]:
        if LLM_INPUT_HOOK not in agent.hook_lists or LLM_OUTPUT_HOOK not in agent.hook_lists:
            return []
        active, model = self._active, _configured_model(agent)

        def name_llm_caller(messages: Any) -> Any:
            if active():
                note_caller(name, model)
            return messages

        def forget_llm_caller(response: Any) -> Any:
            note_caller(None, None)
            return response

        return [(LLM_INPUT_HOOK, name_llm_caller), (LLM_OUTPUT_HOOK, forget_llm_caller)]

    def _make_hook(self) -> Callable[..., Any]:
        translator, active, on_activity = self._translator, self._active, self._on_activity

        def capture_silent_send(sender: Any, message: Mapping[str, Any] | str, recipient: Any,
                                silent: bool) -> Mapping[str, Any] | str:
            # Non-silent sends reach capture through the IOStream when the recipient prints them
            # (on_activity makes sure that stream records, whichever thread this is).
            if active():
                on_activity()
                if silent:
                    translator.on_message(sender, recipient, message, silent=True)
            return message

        return capture_silent_send

    def _wrap_executor(self, agent: Any, name: str) -> CapturingCodeExecutor | None:
        inner = getattr(agent, "_code_executor", None)
        if inner is None or isinstance(inner, CapturingCodeExecutor):
            return None
        wrapper = CapturingCodeExecutor(inner, sink=self._sink, agent=name, active=self._active)
        agent._code_executor = wrapper
        self._translator.code_agents.add(name)
        return wrapper

    # -- detaching --------------------------------------------------------------------------------

    def detach_all(self) -> None:
        """Remove every hook and restore every wrapped executor."""
        with self._lock:
            attached = list(self._attached.items())
            self._attached = weakref.WeakKeyDictionary()
            self._pending = []
        for agent, attachment in attached:
            for method, hook in attachment.hooks:
                hooks = agent.hook_lists.get(method, [])
                if hook in hooks:
                    hooks.remove(hook)
            current = getattr(agent, "_code_executor", None)
            if isinstance(current, CapturingCodeExecutor) and current is attachment.wrapper:
                agent._code_executor = current.inner


def _configured_model(agent: Any) -> str | None:
    """The model of the agent's first LLM config entry (the one AG2 tries first), if any."""
    entries = getattr(getattr(agent, "llm_config", None), "config_list", None) or ()
    for entry in entries:
        model = entry.get("model") if isinstance(entry, dict) else getattr(entry, "model", None)
        if isinstance(model, str) and model:
            return model
    return None


def _is_built(agent: Any) -> bool:
    hook_lists = getattr(agent, "hook_lists", None)
    return isinstance(hook_lists, dict) and HOOK in hook_lists and callable(getattr(agent, "register_hook", None))
