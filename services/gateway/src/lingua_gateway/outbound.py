"""A bounded outbound queue per connection with a send timeout.

``websockets`` blocks ``send()`` for as long as a peer does not read; one writer task per
connection drains a bounded queue so that a slow reader never blocks the read loop or any
other connection, and is closed (4008) when its queue overflows or a send times out.

A message may carry ``on_sent``, called once the socket has taken it: an answer is
acknowledged to its session's outbox only then (``outbox_ack``), never on being queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection

from lingua_shared.protocol import CloseCode


class Outbound:
    def __init__(
        self, ws: ServerConnection, maxsize: int, send_timeout: float, on_slow: Any = None
    ) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[tuple[str | bytes | None, Callable[[], None] | None] | None]
        self.queue = asyncio.Queue(maxsize)
        self.send_timeout = send_timeout
        self.on_slow = on_slow
        self.task = asyncio.create_task(self._writer())
        self._closing: asyncio.Task[None] | None = None

    def send(self, message: dict[str, Any], on_sent: Callable[[], None] | None = None) -> bool:
        """Queue a message; ``False`` (and the connection is being closed) when full.
        ``on_sent`` runs once the socket has taken it (never if it is not sent)."""
        return self.send_frame(orjson.dumps(message).decode(), on_sent)

    def send_frame(
        self, frame: str | bytes | None, on_sent: Callable[[], None] | None = None
    ) -> bool:
        """Queue a ready frame (``bytes`` go out as a binary frame, e.g. a pong); ``None``
        sends nothing and runs ``on_sent`` once everything queued before it was sent."""
        try:
            self.queue.put_nowait((frame, on_sent))
            return True
        except asyncio.QueueFull:
            self._slow("outbound queue full")
            return False

    def after_sent(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything queued so far has been sent."""
        self.send_frame(None, callback)

    def _slow(self, reason: str) -> None:
        if self.on_slow is not None:
            self.on_slow()
        if self._closing is None:
            self._closing = asyncio.create_task(
                self.ws.close(CloseCode.SLOW_CONSUMER, f"slow consumer: {reason}")
            )

    async def _writer(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            frame, on_sent = item
            if frame is not None:
                try:
                    await asyncio.wait_for(self.ws.send(frame), self.send_timeout)
                except TimeoutError:
                    self._slow("send timed out")
                    return
                except Exception:
                    return  # connection closed; the read loop ends it
            if on_sent is not None:
                on_sent()

    async def flush_and_stop(self, timeout: float = 1.0) -> None:
        """Let queued messages go out (bounded), then stop the writer."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
