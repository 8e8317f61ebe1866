"""Code execution capture: a wrapper satisfying AG2's ``CodeExecutor`` protocol.

::

    agent._code_executor = CapturingCodeExecutor(original, ...)   (CaptureSession.attach)
    AG2 ─ execute_code_blocks(blocks) ─▶ wrapper ─▶ original executor ─▶ CodeResult
                                            └──▶ ``code_execution`` {language, code, exit_code, output, duration_s}

The wrapper changes nothing about execution: same blocks, same result object, same exceptions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from autogen.coding.base import CodeBlock, CodeExecutor, CodeExtractor, CodeResult

from isolane.capture.sink import Sink, emit_payload
from isolane.schemas.payloads import CodeExecution

__all__ = ["CapturingCodeExecutor"]

logger = logging.getLogger(__name__)


class CapturingCodeExecutor:
    """Runs code with ``inner`` and emits one ``code_execution`` per ``execute_code_blocks`` call.

    Several blocks executed in one call give one event: languages and code joined in block
    order (AG2 returns one result for them all), ``blocks`` holding the count. A call that
    raises emits ``exit_code=None`` with the error as output, then re-raises. Emission stops once
    ``active()`` turns false (the capture session ended). Other attributes are read from
    ``inner`` (``work_dir``, ``timeout``...).
    """

    def __init__(self, inner: CodeExecutor, *, sink: Sink, agent: str | None,
                 active: Callable[[], bool] = lambda: True) -> None:
        self.inner = inner
        self._sink = sink
        self._agent = agent
        self._active = active

    @property
    def code_extractor(self) -> CodeExtractor:
        """The wrapped executor's extractor."""
        return self.inner.code_extractor

    def execute_code_blocks(self, code_blocks: list[CodeBlock]) -> CodeResult:
        """Execute with the wrapped executor and report it."""
        languages = list(dict.fromkeys(b.language for b in code_blocks))
        language = ",".join(languages) or "unknown"
        code = "\n\n".join(b.code for b in code_blocks)
        started = time.monotonic()
        try:
            result = self.inner.execute_code_blocks(code_blocks)
        except BaseException as exc:
            if self._active():
                emit_payload(self._sink, "code_execution", CodeExecution(
                    language=language, exit_code=None, code=code, output=f"{type(exc).__name__}: {exc}",
                    agent=self._agent, duration_s=time.monotonic() - started), extra={"blocks": len(code_blocks)})
            raise
        if self._active():
            extra: dict[str, Any] = {"blocks": len(code_blocks)}
            code_file = getattr(result, "code_file", None)
            if code_file:
                extra["code_file"] = str(code_file)
            emit_payload(self._sink, "code_execution", CodeExecution(
                language=language, exit_code=result.exit_code, code=code, output=result.output,
                agent=self._agent, duration_s=time.monotonic() - started), extra=extra)
        return result

    def restart(self) -> None:
        """Restart the wrapped executor."""
        self.inner.restart()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper: defer to the real executor.
        if name == "inner":  # not set yet (copy/unpickle): avoid recursing
            raise AttributeError(name)
        return getattr(self.inner, name)
