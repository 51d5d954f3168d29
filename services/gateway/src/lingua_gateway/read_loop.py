"""The one read loop of both WebSocket endpoints: every frame is handled, and every failure
answered, the same way.

A domain error (bad input) gets its typed ``error`` and the connection stays open (unless the
error carries a close code, like ``Unauthorized``: then the error goes out and the connection
closes with that code); an unexpected bug gets ``INTERNAL_ERROR`` and the connection stays open
too: one bad frame never costs a node or a client its connection. Reads are paused whenever
the connection exceeds its byte rate (:class:`~lingua_gateway.access.ByteRate`).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from lingua_gateway.access import ByteRate
from lingua_gateway.metrics import Metrics
from lingua_gateway.outbound import Outbound
from lingua_shared.errors import InvalidMessage, LinguaError
from lingua_shared.logs import get_logger
from lingua_shared.protocol import ErrorCode, ErrorMessage

log = get_logger(__name__)
FAIR_SHARE_FRAMES = 16  # a connection yields the loop after this many frames in a row


class FrameEndpoint(Protocol):
    """What the read loop needs of a connection."""

    ENDPOINT: ClassVar[str]  # "node" or "session": metric labels and log event names
    ws: ServerConnection

    async def on_frame(self, raw: str | bytes) -> None:
        """Handle one frame; a :class:`LinguaError` is the peer's fault."""

    def send_error(self, err: LinguaError | ErrorMessage) -> None:
        """Send a typed ``error``."""

    async def close(self, code: int, reason: str) -> None:
        """Flush what is queued, then close."""

    def log_context(self) -> dict[str, Any]:
        """The ids to log with (conn, node or session)."""


class EndpointConnection:
    """What a node and a session connection share: typed errors go out through the bounded
    outbound queue (counted per endpoint), and a close lets that queue flush first."""

    ENDPOINT: ClassVar[str]
    ws: ServerConnection
    out: Outbound
    metrics: Metrics

    def send_error(self, err: LinguaError | ErrorMessage) -> None:
        msg = err.to_message() if isinstance(err, LinguaError) else err
        self.metrics.errors_sent.labels(self.ENDPOINT, msg.code).inc()
        self.out.send(msg.to_wire())

    async def close(self, code: int, reason: str) -> None:
        await self.out.flush_and_stop(0.5)
        await self.ws.close(code, reason)


async def read_frames(conn: FrameEndpoint, metrics: Metrics, rate: ByteRate | None = None) -> None:
    """Feed every frame of ``conn.ws`` to ``conn.on_frame`` until the connection closes."""
    endpoint = conn.ENDPOINT
    metrics.connections.labels(endpoint).inc()
    frames = 0
    try:
        async for raw in conn.ws:
            frames += 1
            if frames % FAIR_SHARE_FRAMES == 0:
                # Frames already buffered are read without suspending, and a handler may not
                # suspend either (a throttled session touch, a heartbeat): yield now and then,
                # or one client flooding frames keeps the loop from every other connection,
                # whose keepalive pongs then go unanswered.
                await asyncio.sleep(0)
            if rate is not None:
                # the bucket is checked inline: a coroutine per frame only when it must pause
                paused = rate.delay_for(len(raw))
                if paused > 0:
                    await asyncio.sleep(paused)
                    metrics.throttled_seconds.labels(endpoint).inc(paused)
            try:
                await conn.on_frame(raw)
            except LinguaError as err:
                if isinstance(err, InvalidMessage):
                    metrics.message_in(endpoint, "invalid").inc()
                log.info(
                    f"gateway.{endpoint}_bad_input",
                    code=err.code.value,
                    error=err.message,
                    **conn.log_context(),
                )
                conn.send_error(err)
                if err.close_code is not None:
                    await conn.close(err.close_code, err.message[:120])
                    return
            except Exception:
                log.exception(f"gateway.{endpoint}_internal_error", **conn.log_context())
                conn.send_error(ErrorMessage(code=ErrorCode.INTERNAL_ERROR, message="internal"))
    except ConnectionClosed:
        pass
    finally:
        metrics.connections.labels(endpoint).dec()
