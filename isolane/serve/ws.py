"""One run's events over a WebSocket: replay from ``since``, then live, bounded per client.

::

    Executor.batches(): store pages   ──▶ producer ──▶ [outbox: ≤ queue_size messages] ──▶ writer ──▶ socket
    (replay), then the Hub's live     │ outbox full: stop following (the hub subscription goes),
    batches (each batch's JSON text   │ queue {"type": "lagged", "last_seq": N}, wait until the
     is encoded once from the stored  │ client drained half, follow again from the store at N
     rows, ``data`` text spliced in
     unparsed, and shared by every
     client: slices, not copies)
    socket ──▶ reader: {"op": "answer", "request_id", "text"} ──▶ Executor.answer ──▶ reply frame

Server → client: text frames holding one or more JSON messages, one per line (a burst of events
travels in one frame; JSON text never contains a raw newline). A message is an event envelope (it
has ``seq``), or a control message without ``seq``:

* ``{"type": "lagged", "last_seq": N}`` — the client fell behind; events after ``N`` follow from
  the store, in order. Nothing is lost and nothing repeats; no action is needed.
* ``{"type": "answer_ok" | "answer_refused", "request_id": ..., "error": ...}`` — reply to an answer.
* ``{"type": "end", "status": S, "last_seq": N}`` — the run has ended and every event was sent;
  the server closes the socket (1000).

A slow client costs the server at most ``queue_size`` messages plus one store page, and never slows
the run: the writer of the store publishes to bounded subscriptions that never block.
"""

from __future__ import annotations

import logging
from collections import deque
from contextlib import aclosing
from typing import Any, Final

import anyio
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from isolane.errors import IsolaneError
from isolane.executor.executor import Executor, RunHandle
from isolane.executor.hub import READ_PAGE, Batch
from isolane.schemas.payloads import EVENT_TYPES

__all__ = ["CONTROL_FRAMES", "DEFAULT_QUEUE_SIZE", "close_reason", "stream_run"]

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE: Final = 1024
#: Types of control frames (never event types, and never carrying ``seq``).
CONTROL_FRAMES: Final = frozenset({"lagged", "end", "answer_ok", "answer_refused"})
assert not CONTROL_FRAMES & EVENT_TYPES
_MAX_CLIENT_MESSAGE: Final = 512 * 1024
#: Messages sent in one frame at most (what is queued when the socket is writable goes together).
_MAX_BATCH: Final = 256
#: Close code when the server cannot go on (RFC 6455 "internal error").
_SERVER_ERROR: Final = 1011


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame may carry (123 bytes of UTF-8)."""
    return text.encode()[:123].decode(errors="ignore")


def _control(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


class _Outbox:
    """The bounded queue between the producers and the socket writer, counted in messages.

    Items are lists of messages: a slice of a :class:`~isolane.executor.hub.Batch`'s shared
    lines (never copied per client) or one control message. One consumer (the writer).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[list[str]] = deque()
        self._used = 0
        self._closed = False
        #: The close frame the writer ends the socket with.
        self.close_code = 1000
        self.close_reason = ""
        self._filled = anyio.Event()
        self._freed: anyio.Event | None = None

    def used(self) -> int:
        return self._used

    def room(self) -> int:
        return self.size - self._used

    def put_nowait(self, messages: list[str]) -> None:
        """Queue ``messages`` (the caller checked :meth:`room`)."""
        if self._closed:
            raise anyio.ClosedResourceError
        self._items.append(messages)
        self._used += len(messages)
        self._filled.set()

    async def put(self, message: str) -> None:
        """Queue one control message, waiting while the queue is full."""
        while self._used >= self.size and not self._closed:
            await self._wait_freed()
        self.put_nowait([message])

    async def drained(self) -> None:
        """Wait until at most half the queue is used."""
        while self._used > self.size // 2:
            await self._wait_freed()

    async def _wait_freed(self) -> None:
        if self._freed is None:
            self._freed = anyio.Event()
        await self._freed.wait()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """No more messages; the writer sends what is queued, then closes the socket with
        ``code`` and ``reason`` (the first close decides)."""
        if not self._closed:
            self.close_code, self.close_reason = code, reason
        self._closed = True
        self._filled.set()
        if self._freed is not None:
            self._freed.set()

    async def take(self, most: int) -> list[str] | None:
        """Up to ``most`` messages, oldest first (waits for one); ``None`` once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._filled = anyio.Event()
            await self._filled.wait()
        taken: list[str] = []
        while self._items and len(taken) < most:
            item = self._items.popleft()
            room = most - len(taken)
            if len(item) > room:
                self._items.appendleft(item[room:])
                item = item[:room]
            taken += item
        self._used -= len(taken)
        if self._freed is not None:
            self._freed.set()
            self._freed = None
        return taken


async def stream_run(websocket: WebSocket, executor: Executor, handle: RunHandle, since: int, *,
                     queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
    """Serve one accepted socket until the run has ended (or the client left)."""
    outbox = _Outbox(queue_size)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write, websocket, outbox, tg.cancel_scope)
            tg.start_soon(_read, websocket, executor, handle, outbox, tg.cancel_scope)
            try:
                last = await _produce(executor, handle, since, outbox)
            except IsolaneError as exc:
                # The store failed while serving: a proper close frame that says so, not a drop.
                log.warning("websocket of run %s: %s", handle.run_id, exc)
                outbox.close(_SERVER_ERROR, close_reason(f"cannot read the run's events: {exc}"))
                return
            outcome = await handle.wait()
            await outbox.put(_control(type="end", status=outcome.status, last_seq=last))
            outbox.close()  # the writer sends what is queued, then closes the socket
    finally:
        outbox.close()


async def _produce(executor: Executor, handle: RunHandle, since: int, outbox: _Outbox) -> int:
    """Queue every event after ``since`` in order; return the last seq queued.

    The events come from :meth:`Executor.batches` (stored pages, then the hub's live batches,
    whose encoded text is shared by every client). When the outbox fills up the client lags:
    the stream is closed (its hub subscription goes), a ``lagged`` message is queued, and once
    the client drained half the queue the stream starts again from the store at that seq.
    """
    last = since
    while True:
        full = False
        # No more than fits, plus one to learn whether the outbox overflows: a client catching
        # up reads (and decodes) each stored event once, not a page per lag.
        batches = executor.batches(handle.run_id, last, follow=not handle.done,
                                   page_size=lambda: min(READ_PAGE, outbox.room() + 1))
        async with aclosing(batches):
            async for batch in batches:
                last, full = _queue(outbox, batch, last)
                if full:
                    break
        if not full:
            return last
        log.debug("websocket client of run %s lagged after seq %d", handle.run_id, last)
        await outbox.put(_control(type="lagged", last_seq=last))
        await outbox.drained()


def _queue(outbox: _Outbox, batch: Batch, last: int) -> tuple[int, bool]:
    """Queue what fits of ``batch`` (events after ``last``, in order); return the new last seq
    and whether the outbox was full."""
    rows, lines = batch.rows, batch.lines()
    room = outbox.room()
    if len(rows) <= room:
        outbox.put_nowait(lines)
        return rows[-1][1], False
    if room > 0:
        outbox.put_nowait(lines[:room])
        last = rows[room - 1][1]
    return last, True


async def _write(websocket: WebSocket, outbox: _Outbox, scope: anyio.CancelScope) -> None:
    try:
        while (messages := await outbox.take(_MAX_BATCH)) is not None:
            await websocket.send_text("\n".join(messages))
        await websocket.close(outbox.close_code, outbox.close_reason)
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
                await outbox.put(_control(type="answer_refused", request_id=None,
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
        await outbox.put(_control(
            type="answer_refused", request_id=None,
            error='send {"op": "answer", "request_id": "...", "text": "..."} as JSON'))
        return
    request_id, text = message.get("request_id"), message.get("text")
    if not isinstance(request_id, str) or not isinstance(text, str):
        await outbox.put(_control(type="answer_refused", request_id=request_id,
                                        error="request_id and text must be strings"))
        return
    try:
        await executor.answer(handle.run_id, request_id, text, source="websocket")
    except IsolaneError as exc:
        await outbox.put(_control(type="answer_refused", request_id=request_id, error=str(exc)))
        return
    await outbox.put(_control(type="answer_ok", request_id=request_id))
