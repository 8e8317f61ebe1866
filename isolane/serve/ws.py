"""One run's events over a WebSocket: replay from ``since``, then live, bounded per client.

::

    RunHandle.events(since) ──▶ producer ──send_nowait──▶ [outbox: ≤ queue_size frames] ──▶ writer ──▶ socket
      (store pages, then the          │ outbox full: stop following (the hub subscription goes),
       Hub's live events)             │ queue {"type": "lagged", "last_seq": N}, wait until the
                                      │ client drained half, follow again from the store at N
    socket ──▶ reader: {"op": "answer", "request_id", "text"} ──▶ Executor.answer ──▶ reply frame

Server → client: text frames holding one or more JSON messages, one per line (a burst of events
travels in one frame; JSON text never contains a raw newline). A message is an event envelope (it
has ``seq``), or a control message without ``seq``:

* ``{"type": "lagged", "last_seq": N}`` — the client fell behind; events after ``N`` follow from
  the store, in order. Nothing is lost and nothing repeats; no action is needed.
* ``{"type": "answer_ok" | "answer_refused", "request_id": ..., "error": ...}`` — reply to an answer.
* ``{"type": "end", "status": S, "last_seq": N}`` — the run has ended and every event was sent;
  the server closes the socket (1000).

A slow client costs the server at most ``queue_size`` frames plus one store page, and never slows
the run: the writer of the store publishes to bounded subscriptions that never block.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any, Final, cast

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

from isolane.errors import IsolaneError
from isolane.executor.executor import Executor, RunHandle
from isolane.schemas.events import EVENT_TYPES, Event

__all__ = ["CONTROL_FRAMES", "DEFAULT_QUEUE_SIZE", "stream_run"]

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE: Final = 1024
#: Types of control frames (never event types, and never carrying ``seq``).
CONTROL_FRAMES: Final = frozenset({"lagged", "end", "answer_ok", "answer_refused"})
assert not CONTROL_FRAMES & EVENT_TYPES
_MAX_CLIENT_MESSAGE: Final = 512 * 1024
#: Messages sent in one frame at most (what is queued when the socket is writable goes together).
_MAX_BATCH: Final = 256


def _control(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


class _Outbox:
    """The bounded queue between the producer and the socket writer, with a low-water signal."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.send: MemoryObjectSendStream[str]
        self.recv: MemoryObjectReceiveStream[str]
        self.send, self.recv = anyio.create_memory_object_stream[str](size)
        self._low: anyio.Event | None = None

    def used(self) -> int:
        return self.recv.statistics().current_buffer_used

    async def drained(self) -> None:
        """Wait until at most half the queue is used."""
        while self.used() > self.size // 2:
            self._low = anyio.Event()
            await self._low.wait()

    def taken(self) -> None:
        if self._low is not None and self.used() <= self.size // 2:
            self._low.set()
            self._low = None


async def stream_run(websocket: WebSocket, executor: Executor, handle: RunHandle, since: int, *,
                     queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
    """Serve one accepted socket until the run has ended (or the client left)."""
    outbox = _Outbox(queue_size)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write, websocket, outbox, tg.cancel_scope)
            tg.start_soon(_read, websocket, executor, handle, outbox, tg.cancel_scope)
            last = await _produce(handle, since, outbox)
            outcome = await handle.wait()
            await outbox.send.send(_control(type="end", status=outcome.status, last_seq=last))
            await outbox.send.aclose()  # the writer sends what is queued, then closes the socket
    finally:
        outbox.send.close()
        outbox.recv.close()


async def _produce(handle: RunHandle, since: int, outbox: _Outbox) -> int:
    """Queue every event after ``since`` in order; return the last seq queued."""
    last = since
    while True:
        lagged = False
        events = cast("AsyncGenerator[Event, None]", handle.events(since=last))
        try:
            async for event in events:
                try:
                    outbox.send.send_nowait(event.to_json().decode())
                except anyio.WouldBlock:
                    lagged = True
                    break
                last = event.seq
        finally:
            await events.aclose()  # unsubscribes: nothing more is held for this client
        if not lagged:
            return last
        log.debug("websocket client of run %s lagged after seq %d", handle.run_id, last)
        await outbox.send.send(_control(type="lagged", last_seq=last))
        await outbox.drained()


async def _write(websocket: WebSocket, outbox: _Outbox, scope: anyio.CancelScope) -> None:
    try:
        async with outbox.recv:
            async for frame in outbox.recv:
                batch = [frame]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(outbox.recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                outbox.taken()
                await websocket.send_text("\n".join(batch))
        await websocket.close(1000)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client left
    scope.cancel()


async def _read(websocket: WebSocket, executor: Executor, handle: RunHandle, outbox: _Outbox,
                scope: anyio.CancelScope) -> None:
    """Client → server messages: answers to human-input requests. Ends the session on disconnect."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text") or message.get("bytes") or b""
            if len(raw) > _MAX_CLIENT_MESSAGE:
                await outbox.send.send(_control(type="answer_refused", request_id=None,
                                                error="message too large"))
                continue
            await _handle_message(raw, executor, handle, outbox)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    except anyio.ClosedResourceError:
        return  # the run ended and the outbox closed; the writer closes the socket
    scope.cancel()


async def _handle_message(raw: str | bytes, executor: Executor, handle: RunHandle,
                          outbox: _Outbox) -> None:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict) or message.get("op") != "answer":
        await outbox.send.send(_control(
            type="answer_refused", request_id=None,
            error='send {"op": "answer", "request_id": "...", "text": "..."} as JSON'))
        return
    request_id, text = message.get("request_id"), message.get("text")
    if not isinstance(request_id, str) or not isinstance(text, str):
        await outbox.send.send(_control(type="answer_refused", request_id=request_id,
                                        error="request_id and text must be strings"))
        return
    try:
        await executor.answer(handle.run_id, request_id, text, source="websocket")
    except IsolaneError as exc:
        await outbox.send.send(_control(type="answer_refused", request_id=request_id, error=str(exc)))
        return
    await outbox.send.send(_control(type="answer_ok", request_id=request_id))
