"""The offline endpoint a worker serves itself for a workflow given by reference.

::

    run-isolated --llm offline --workflow flow.py:main
      parent: checks flow.py (it binds offline_script), stores config["llm"] = {..., "offline": true},
              starts no endpoint (importing flow.py to get its script would run user code there)
      worker: resolves flow.py:main ──▶ serving_offline_script(wf.func, config)
              a FakeLLM serving flow.offline_script() for the workflow's duration;
              $ISOLANE_OFFLINE_LLM_URL and a dummy $OPENAI_API_KEY point the workflow at it

Nothing happens when the config asks for no offline endpoint, when the starter already serves
one (its URL is in the environment: the CLI does so for built-in workflows), or when the
workflow's module has no ``offline_script``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from isolane.settings import OFFLINE_LLM_URL_ENV

if TYPE_CHECKING:
    from isolane.offline.script import Script

__all__ = ["offline_script_of", "serving_offline_script"]

log = logging.getLogger(__name__)

#: The dummy key a worker talking to an offline endpoint gets (the endpoint checks none).
_DUMMY_KEY: Final = "isolane-offline"
_API_KEY_ENV: Final = "OPENAI_API_KEY"


def offline_script_of(func: Callable[..., Any]) -> Script | None:
    """The offline :class:`~isolane.offline.script.Script` of the module defining ``func``
    (its ``offline_script()``, a Script or a :meth:`Script.from_dict` mapping), or ``None``."""
    from isolane.offline.script import Script

    module = sys.modules.get(getattr(func, "__module__", "") or "")
    factory = getattr(module, "offline_script", None)
    if not callable(factory):
        return None
    script = factory()
    return script if isinstance(script, Script) else Script.from_dict(script)


@contextmanager
def serving_offline_script(func: Callable[..., Any], config: Mapping[str, Any]) -> Iterator[None]:
    """Serve ``func``'s offline script while the block runs, when the run asks for it (see above)."""
    llm = config.get("llm")
    wanted = isinstance(llm, Mapping) and llm.get("offline") is True
    if not wanted or os.environ.get(OFFLINE_LLM_URL_ENV):
        yield
        return
    script = offline_script_of(func)
    if script is None:
        yield
        return
    from isolane.offline.server import FakeLLM

    with FakeLLM(script) as server:
        log.info("serving the workflow's offline script at %s", server.base_url)
        os.environ[OFFLINE_LLM_URL_ENV] = server.base_url
        os.environ.setdefault(_API_KEY_ENV, _DUMMY_KEY)
        try:
            yield
        finally:
            os.environ.pop(OFFLINE_LLM_URL_ENV, None)
