"""Where captured events go: the :class:`Sink` protocol and the one typed way to write to it.

Every channel of :mod:`isolane.capture` builds a payload struct from :mod:`isolane.schemas.payloads`
and hands it to :func:`emit_payload`, which turns it into the plain ``dict`` the sink receives
(defaults omitted, values JSON-safe). No channel builds an event dict by hand.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import msgspec

from isolane.schemas.payloads import PAYLOADS

__all__ = ["LockedSink", "Sink", "emit_payload", "to_data"]


@runtime_checkable
class Sink(Protocol):
    """Receives captured events: ``type_`` is a stored event type (``isolane.schemas.payloads``),
    ``data`` its payload. The worker's emitter is the production sink.

    Capture serialises its calls (one at a time, in event order) even when AG2 runs tools or
    code in other threads, so a sink need not be thread-safe on capture's account. ``emit`` may
    block (back-pressure); it should not raise.
    """

    def emit(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> object:
        """Record one event (any return value, e.g. the emitter's ``seq``, is ignored)."""
        ...


class LockedSink:
    """Serialises every :meth:`emit` to the wrapped sink behind one re-entrant lock.

    ``lock`` is shared with the capture channels so that a channel can emit several events
    (``llm_call`` then ``cost_update``) without another thread's event landing in between.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.lock = threading.RLock()

    def emit(self, type_: str, data: dict[str, Any], node_id: str | None = None) -> None:
        """Forward to the wrapped sink under the lock."""
        with self.lock:
            self.sink.emit(type_, data, node_id)


def _fallback(obj: Any) -> Any:
    """Values msgspec cannot convert (agents, pydantic models, callables) are kept as text."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return dump(mode="json")
        except (TypeError, ValueError):  # pydantic's serialization errors are ValueErrors
            pass
    return repr(obj)


def to_data(value: Any) -> Any:
    """``value`` as JSON-safe builtins (structs without their defaults, unknown objects as text)."""
    return msgspec.to_builtins(value, enc_hook=_fallback, str_keys=True)


def emit_payload(
    sink: Sink,
    type_: str,
    payload: msgspec.Struct,
    *,
    extra: Mapping[str, Any] | None = None,
    node_id: str | None = None,
) -> None:
    """Emit ``payload`` as event ``type_``; ``extra`` keys are added beside the declared ones.

    Raises ``TypeError`` if ``payload`` is not the declared payload class of ``type_`` (a bug in
    the caller, caught by the tests).
    """
    declared = PAYLOADS.get(type_)
    if declared is None or not isinstance(payload, declared):
        raise TypeError(f"event type {type_!r} takes a {getattr(declared, '__name__', '?')} payload, "
                        f"got {type(payload).__name__}")
    data: dict[str, Any] = to_data(payload)
    if extra:
        for key, value in extra.items():
            data.setdefault(key, to_data(value))
    sink.emit(type_, data, node_id)
