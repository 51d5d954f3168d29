"""Publishing: confirmed, mandatory publishes on one channel, and coalescing per loop tick.

Every publish waits for the broker's confirm and is ``mandatory``: an unroutable message (for
example to a gateway replica that is gone) raises :class:`Unroutable` instead of vanishing,
and a nack from a full work queue raises :class:`BusOverloaded`.

The job path's publishes are *coalesced* (:meth:`Publisher.publish_batched`): the messages for
one exchange and routing key published in the same event-loop tick leave as one AMQP message
(type :data:`BATCH_TYPE`, a JSON array of the messages), each caller still awaiting the
broker's confirm of its own message. One message in a tick leaves as itself, so an idle system
sends exactly what it would unbatched; under load the per-message costs (frames, confirms,
acks, the broker's queue work) are paid once per batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pydantic import BaseModel

from lingua_shared.bus.topology import Topology
from lingua_shared.errors import DependencyDown, LinguaError

Properties = aiormq.spec.Basic.Properties  # aio-pika builds its messages on aiormq
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
NOT_PERSISTENT = int(aio_pika.DeliveryMode.NOT_PERSISTENT)
BATCH_TYPE = "lingua.batch"  # AMQP ``type`` of a coalesced message: a JSON array of messages
BATCH_MAX_ITEMS = 64
BATCH_MAX_BYTES = 1 << 20  # an utterance's audio rides in job.request: bound the batch by size


class Unroutable(LinguaError):
    """A mandatory publish the broker could not route (no queue bound for the key)."""


class BusOverloaded(DependencyDown):
    """The broker nacked a publish: a work queue is at ``x-max-length`` (reject-publish)."""


def encode(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json", exclude_none=True))


class _Batch:
    """Messages for one exchange and routing key, waiting for the end of the loop tick."""

    __slots__ = ("bodies", "done", "kinds", "persistent", "sealed", "size")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.bodies: list[bytes] = []
        self.kinds: list[str | None] = []
        self.size = 0
        self.persistent = False
        self.done = done
        self.sealed = False
        # every awaiter may have been cancelled: never leave an exception unretrieved
        done.add_done_callback(lambda f: f.cancelled() or f.exception())


class Publisher:
    """Confirmed, mandatory publishes on one channel."""

    def __init__(
        self,
        channel: AbstractChannel,
        topo: Topology,
        confirm_timeout: float,
        batch_max_items: int = BATCH_MAX_ITEMS,
        batch_max_bytes: int = BATCH_MAX_BYTES,
    ) -> None:
        self.channel = channel
        self.topo = topo
        self.timeout = confirm_timeout
        self.batch_max_items = max(1, batch_max_items)
        self.batch_max_bytes = batch_max_bytes
        self._exchanges: dict[str, AbstractExchange] = {}
        self._open: dict[tuple[str, str], _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()
        # what coalescing achieved: AMQP messages sent by publish_batched, and the messages in
        # them (services export the ratio as a metric)
        self.batches_sent = 0
        self.batched_messages = 0

    @classmethod
    async def open(
        cls,
        conn: AbstractRobustConnection,
        topo: Topology,
        confirm_timeout: float = 5.0,
        batch_max_items: int = BATCH_MAX_ITEMS,
        batch_max_bytes: int = BATCH_MAX_BYTES,
    ) -> Publisher:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        self = cls(channel, topo, confirm_timeout, batch_max_items, batch_max_bytes)
        for name in (topo.events, topo.deliver, topo.dlx):
            self._exchanges[name] = await channel.get_exchange(name, ensure=False)
        return self

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        model: BaseModel,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        persistent: bool = True,
        expiration_s: float | None = None,
    ) -> None:
        await self._send_body(
            exchange,
            routing_key,
            encode(model),
            persistent=persistent,
            kind=getattr(model, "kind", None),
            reply_to=reply_to,
            correlation_id=correlation_id,
            expiration_s=expiration_s,
        )

    async def _send_body(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        persistent: bool,
        kind: str | None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        expiration_s: float | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        if exchange and exchange not in self._exchanges:
            raise KeyError(exchange)
        # aiormq's channel directly: what aio_pika's Message and Exchange.publish would
        # build and check, without their per-message objects (the same frames and confirm).
        # ``wait=False``: the channel's lock is not held until the socket drained this frame,
        # so the publishes of one tick queue together and leave in one write (the bus
        # connection's TickWriter); the broker's confirm is still awaited, message by message
        properties = Properties(
            content_type="application/json",
            delivery_mode=PERSISTENT if persistent else NOT_PERSISTENT,
            reply_to=reply_to,
            correlation_id=correlation_id,
            expiration=None if expiration_s is None else str(int(expiration_s * 1000)),
            message_type=kind,
            headers=headers,
        )
        try:
            if self.channel.is_closed:
                raise aio_pika.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")
            channel = await self.channel.get_underlay_channel()
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                timeout=self.timeout,
                wait=False,
            )
        except aio_pika.exceptions.PublishError as exc:
            raise Unroutable(
                f"unroutable: {exchange}/{routing_key}", {"routing_key": routing_key}
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:  # a nack: a full work queue refused it
            raise BusOverloaded(
                f"refused by the broker (queue full): {exchange}/{routing_key}",
                {"routing_key": routing_key},
            ) from exc
        except (
            TimeoutError,
            aio_pika.exceptions.AMQPError,
            # a channel closed by a broker crash, until the robust connection restores it, is
            # a RuntimeError, not an AMQPError: it is an outage all the same
            aio_pika.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise DependencyDown(f"publish to {exchange}/{routing_key} failed: {exc!r}") from exc

    async def publish_batched(
        self, exchange: str, routing_key: str, model: BaseModel, *, persistent: bool = True
    ) -> None:
        """Publish ``model`` coalesced with the other messages for ``exchange``/``routing_key``
        of this loop tick; returns once the broker confirmed the message that carried it and
        raises what :meth:`publish` would (for every message of that batch alike)."""
        body = encode(model)
        key = (exchange, routing_key)
        batch = self._open.get(key)
        if batch is not None and batch.size + len(body) > self.batch_max_bytes:
            self._seal(key, batch)
            batch = None
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = _Batch(loop.create_future())
            self._open[key] = batch
            # after the callbacks already due in this tick: the ones that publish too
            loop.call_soon(self._seal, key, batch)
        batch.bodies.append(body)
        batch.kinds.append(getattr(model, "kind", None))
        batch.size += len(body) + 1
        batch.persistent = batch.persistent or persistent
        if len(batch.bodies) >= self.batch_max_items or batch.size >= self.batch_max_bytes:
            self._seal(key, batch)
        await asyncio.shield(batch.done)

    def _seal(self, key: tuple[str, str], batch: _Batch) -> None:
        if batch.sealed:
            return
        batch.sealed = True
        if self._open.get(key) is batch:
            del self._open[key]
        task = asyncio.get_running_loop().create_task(self._send_batch(key, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_batch(self, key: tuple[str, str], batch: _Batch) -> None:
        exchange, routing_key = key
        n = len(batch.bodies)
        try:
            if n == 1:
                await self._send_body(
                    exchange,
                    routing_key,
                    batch.bodies[0],
                    persistent=batch.persistent,
                    kind=batch.kinds[0],
                )
            else:
                await self._send_body(
                    exchange,
                    routing_key,
                    b"[" + b",".join(batch.bodies) + b"]",
                    persistent=batch.persistent,
                    kind=BATCH_TYPE,
                    headers={"x-lingua-items": n},
                )
        except Exception as exc:
            if not batch.done.done():
                batch.done.set_exception(exc)
        else:
            if not batch.done.done():
                batch.done.set_result(None)
        self.batches_sent += 1
        self.batched_messages += n

    async def resend(self, queue: str, body: bytes, kind: str | None = None) -> None:
        """Publish one message of a batch on its own back to ``queue`` (default exchange)."""
        await self._send_body("", queue, body, persistent=True, kind=kind)

    async def dead_letter(self, body: bytes, reason: str) -> None:
        """Publish one message of a batch straight to the dead-letter exchange."""
        await self._send_body(
            self.topo.dlx, "", body, persistent=True, kind=None, headers={"x-lingua-dead": reason}
        )

    async def event(
        self, routing_key: str, model: BaseModel, *, batch: bool = False, **kw: Any
    ) -> None:
        """Publish to the events exchange; ``batch=True`` coalesces (:meth:`publish_batched`)."""
        if batch:
            await self.publish_batched(self.topo.events, routing_key, model, **kw)
        else:
            await self.publish(self.topo.events, routing_key, model, **kw)

    async def to_gateway(
        self, gateway_id: str, model: BaseModel, *, batch: bool = False, **kw: Any
    ) -> None:
        """Deliver to one gateway replica; :class:`Unroutable` when that replica is gone."""
        if batch:
            await self.publish_batched(self.topo.deliver, gateway_id, model, persistent=False)
        else:
            await self.publish(self.topo.deliver, gateway_id, model, persistent=False, **kw)
