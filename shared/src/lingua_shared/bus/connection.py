"""Connecting to RabbitMQ: a robust connection with a bounded start-up and a heartbeat, whose
frames leave one write per loop tick."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aio_pika
import aiormq.connection
from aio_pika.abc import AbstractRobustConnection

from lingua_shared.errors import DependencyDown


def with_heartbeat(url: str, heartbeat_s: int) -> str:
    """``url`` with an AMQP heartbeat, unless it names one itself.

    The broker proposes 60 s and aiormq gives up after (heartbeat + 1) x 3 s of silence, so by
    default a half-open link (a peer gone without a FIN) is noticed after ~3 minutes, and
    until then nothing is consumed. 5 s bounds that at 18 s."""
    parts = urlsplit(url)
    if heartbeat_s <= 0 or "heartbeat" in parse_qs(parts.query):
        return url
    query = f"{parts.query}&heartbeat={heartbeat_s}" if parts.query else f"heartbeat={heartbeat_s}"
    return urlunsplit(parts._replace(query=query))


class TickWriter:
    """The connection's stream writer, writing what one loop tick produced at once.

    aiormq writes each frame (a publish, an ack, a confirm select...) as soon as it is
    queued: one ``send`` each, and on loopback every send also runs the broker's side of
    the socket. Here the frames written in the same tick are joined and sent by one write
    at the end of it; a close or an EOF first sends what is held. The order of the frames
    is kept."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._held: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self.frames = 0  # what aiormq wrote
        self.writes = 0  # what went to the socket

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self.frames += 1

    def flush(self) -> None:
        held, self._held = self._held, []
        if not held or self._writer.is_closing():
            return
        self.writes += 1
        self._writer.write(held[0] if len(held) == 1 else b"".join(held))

    async def drain(self) -> None:
        # what is held leaves at the end of the tick, as every write does: a frame that asks
        # for a drain (an ack) must not cost a write of its own; this only waits while the
        # socket's buffer is over its high-water mark (flow control, as before)
        await self._writer.drain()

    def write_eof(self) -> None:
        self.flush()
        self._writer.write_eof()

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, transport, wait_closed...
        return getattr(self._writer, name)


class TickTransport(aiormq.connection.TCPTransportFactory):
    """aiormq's TCP transport with a :class:`TickWriter`."""

    writer: TickWriter | None = None  # the latest connection's

    async def create(self, url: Any, **kwargs: Any) -> tuple[asyncio.StreamReader, Any]:
        reader, writer = await super().create(url, **kwargs)
        self.writer = TickWriter(writer)
        return reader, self.writer


class TickConnection(aio_pika.RobustConnection):
    """``RobustConnection`` whose every (re)connection uses :class:`TickTransport`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.url.scheme == "amqp":  # amqps keeps aiormq's own TLS transport
            self.kwargs["transport_factory"] = TickTransport()


async def connect(url: str, timeout: float, heartbeat_s: int = 0) -> AbstractRobustConnection:
    """``connect_robust`` with a timeout and a heartbeat, so a half-open link is detected and
    recovered; frames leave one write per loop tick (:class:`TickWriter`)."""
    try:
        return await aio_pika.connect_robust(
            with_heartbeat(url, heartbeat_s), timeout=timeout, connection_class=TickConnection
        )
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        raise DependencyDown(f"RabbitMQ unreachable at startup: {exc!r}") from exc
