"""RabbitMQ topology as data, and the one way every service publishes and consumes.

Topology (names prefixed by ``Settings.bus_prefix``, default ``lingua``)::

    <p>.events    topic exchange, durable: node.register, node.heartbeat.batch, node.disconnected,
                  job.request, job.node_event
    <p>.deliver   direct exchange, durable: routing key = gateway instance id
    <p>.dlx       fanout exchange, durable: dead letters
    <p>.dead      quorum queue bound to <p>.dlx: messages that were rejected or hit the limit
    <p>.node-manager.events   quorum queue, x-delivery-limit, dead-lettered to <p>.dlx
    <p>.dispatcher.events     quorum queue, x-delivery-limit, dead-lettered to <p>.dlx
    <p>.gateway.<instance>    classic exclusive queue per gateway replica, bound to <p>.deliver

Publishing uses publisher confirms and ``mandatory``: an unroutable message (for example to a
gateway replica that is gone) raises :class:`Unroutable` instead of vanishing.
Consuming goes through :func:`consume`: undecodable -> dead-lettered at once; a handler
exception -> requeued, and the queue's delivery limit dead-letters a poison message; a
dependency outage (Redis down) is retried in place and does not count against that limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)
from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lingua_shared.errors import DependencyDown, LinguaError
from lingua_shared.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

# A handler failing with one of these failed because a dependency is away, not because the
# message is bad: requeueing at once would spend the delivery limit within milliseconds and
# dead-letter good messages (a job result during a 2 s Redis outage, fault suite S6).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    DependencyDown,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)
TRANSIENT_RETRY_S = 30.0  # retried in place this long, then requeued (one delivery spent)
TRANSIENT_BACKOFF_S = (0.05, 1.0)  # first and longest pause between two tries


class Unroutable(LinguaError):
    """A mandatory publish the broker could not route (no queue bound for the key)."""


class BusOverloaded(DependencyDown):
    """The broker nacked a publish: a work queue is at ``x-max-length`` (reject-publish)."""


NODE_MANAGER_KEYS = ("node.register", "node.heartbeat.batch", "node.disconnected")
DISPATCHER_KEYS = ("job.request", "job.node_event", "node.disconnected")


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: ExchangeType


@dataclass(frozen=True)
class QueueSpec:
    name: str
    bindings: tuple[tuple[str, str], ...]  # (exchange, routing key)
    quorum: bool = True
    exclusive: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    prefix: str = "lingua"
    delivery_limit: int = 5
    max_length: int = 100_000  # work queues: beyond it publishes are refused (nacked)

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def deliver(self) -> str:
        return f"{self.prefix}.deliver"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def node_manager_queue(self) -> str:
        return f"{self.prefix}.node-manager.events"

    @property
    def dispatcher_queue(self) -> str:
        return f"{self.prefix}.dispatcher.events"

    def gateway_queue(self, instance_id: str) -> str:
        return f"{self.prefix}.gateway.{instance_id}"

    def exchanges(self) -> list[ExchangeSpec]:
        return [
            ExchangeSpec(self.events, ExchangeType.TOPIC),
            ExchangeSpec(self.deliver, ExchangeType.DIRECT),
            ExchangeSpec(self.dlx, ExchangeType.FANOUT),
        ]

    def work_queue_args(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dlx,
            # a bounded backlog: a publish beyond it is nacked, so the publisher (which waits
            # for confirms) sees the refusal and answers a typed error instead of queueing
            # without limit
            "x-max-length": self.max_length,
            "x-overflow": "reject-publish",
        }

    def shared_queues(self) -> list[QueueSpec]:
        return [
            QueueSpec(self.dead, ((self.dlx, ""),), arguments={"x-queue-type": "quorum"}),
            QueueSpec(
                self.node_manager_queue,
                tuple((self.events, k) for k in NODE_MANAGER_KEYS),
                arguments=self.work_queue_args(),
            ),
            QueueSpec(
                self.dispatcher_queue,
                tuple((self.events, k) for k in DISPATCHER_KEYS),
                arguments=self.work_queue_args(),
            ),
        ]

    def shared_queue_spec(self, name: str) -> QueueSpec:
        return next(spec for spec in self.shared_queues() if spec.name == name)

    def gateway_queue_spec(self, instance_id: str) -> QueueSpec:
        return QueueSpec(
            self.gateway_queue(instance_id),
            ((self.deliver, instance_id),),
            quorum=False,
            exclusive=True,
        )


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    """Declare (idempotent) and bind. Consumers must get their queue this way, never with
    ``get_queue(ensure=False)``: a robust channel restores only the queues it declared, and
    with them their consumers; a consumer on an undeclared queue is silently gone after a
    reconnect (fault suite R5: 0 consumers after a broker restart, /readyz still green)."""
    queue = await channel.declare_queue(
        spec.name,
        durable=spec.quorum,
        exclusive=spec.exclusive,
        auto_delete=spec.exclusive,
        arguments=spec.arguments or None,
    )
    for exchange, key in spec.bindings:
        await queue.bind(exchange, routing_key=key)
    return queue


async def declare_topology(channel: AbstractChannel, topo: Topology) -> None:
    """Idempotent: every service calls it at start-up."""
    for ex in topo.exchanges():
        await channel.declare_exchange(ex.name, ex.type, durable=True)
    for spec in topo.shared_queues():
        try:
            await declare_queue(channel, spec)
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise TopologyMismatch(
                f"queue {spec.name} exists with other arguments than {spec.arguments} (made by "
                f"an older version?): delete it (rabbitmqctl delete_queue {spec.name}) once it "
                f"is empty, or use another LINGUA_BUS_PREFIX ({exc})"
            ) from None


class TopologyMismatch(RuntimeError):
    """A queue already exists with other arguments; RabbitMQ cannot change them in place."""


def with_heartbeat(url: str, heartbeat_s: int) -> str:
    """``url`` with an AMQP heartbeat, unless it names one itself.

    The broker proposes 60 s and aiormq gives up after (heartbeat + 1) x 3 s of silence, so by
    default a half-open link (a peer gone without a FIN) is noticed after ~3 minutes, and
    until then nothing is consumed. 5 s bounds that at 18 s (fault suite R5)."""
    parts = urlsplit(url)
    if heartbeat_s <= 0 or "heartbeat" in parse_qs(parts.query):
        return url
    query = f"{parts.query}&heartbeat={heartbeat_s}" if parts.query else f"heartbeat={heartbeat_s}"
    return urlunsplit(parts._replace(query=query))


async def delete_topology(conn: AbstractRobustConnection, topo: Topology) -> None:
    """Delete ``topo``'s shared queues and exchanges (tests and benchmarks clean up with it).
    Best effort, each on its own channel: a failed delete closes its channel."""
    names = [(True, q.name) for q in topo.shared_queues()] + [
        (False, e.name) for e in topo.exchanges()
    ]
    for is_queue, name in names:
        try:
            ch = await conn.channel()
            await (ch.queue_delete(name) if is_queue else ch.exchange_delete(name))
        except Exception:
            continue


async def delete_bus(amqp_url: str, prefix: str) -> None:
    """Delete the shared queues and exchanges of bus ``prefix`` (best effort)."""
    conn = await aio_pika.connect_robust(amqp_url, timeout=5)
    try:
        await delete_topology(conn, Topology(prefix))
    finally:
        await conn.close()


async def connect(url: str, timeout: float, heartbeat_s: int = 0) -> AbstractRobustConnection:
    """``connect_robust`` with a timeout and a heartbeat, so a half-open link is detected and
    recovered."""
    try:
        return await aio_pika.connect_robust(with_heartbeat(url, heartbeat_s), timeout=timeout)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        raise DependencyDown(f"RabbitMQ unreachable at startup: {exc!r}") from exc


def encode(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json", exclude_none=True))


class Publisher:
    """Confirmed, mandatory publishes on one channel."""

    def __init__(self, channel: AbstractChannel, topo: Topology, confirm_timeout: float) -> None:
        self.channel = channel
        self.topo = topo
        self.timeout = confirm_timeout
        self._exchanges: dict[str, AbstractExchange] = {}

    @classmethod
    async def open(
        cls, conn: AbstractRobustConnection, topo: Topology, confirm_timeout: float = 5.0
    ) -> Publisher:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        self = cls(channel, topo, confirm_timeout)
        for name in (topo.events, topo.deliver):
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
        message = aio_pika.Message(
            encode(model),
            content_type="application/json",
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            reply_to=reply_to,
            correlation_id=correlation_id,
            expiration=expiration_s,
            type=getattr(model, "kind", None),
        )
        try:
            await self._exchanges[exchange].publish(
                message, routing_key=routing_key, mandatory=True, timeout=self.timeout
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
            # a channel closed by a broker crash, until the robust connection restores it: a
            # RuntimeError, not an AMQPError (the fault suite's R1 saw it escape)
            aio_pika.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise DependencyDown(f"publish to {exchange}/{routing_key} failed: {exc!r}") from exc

    async def event(self, routing_key: str, model: BaseModel, **kw: Any) -> None:
        await self.publish(self.topo.events, routing_key, model, **kw)

    async def to_gateway(self, gateway_id: str, model: BaseModel, **kw: Any) -> None:
        """Deliver to one gateway replica; :class:`Unroutable` when that replica is gone."""
        await self.publish(self.topo.deliver, gateway_id, model, persistent=False, **kw)


Handler = Callable[[T, AbstractIncomingMessage], Awaitable[None]]


class InFlight:
    """How many deliveries are being handled right now, so a stopping service can cancel its
    consumers and then let these finish (and be acked after their work) before it closes
    the channel. Each delivery runs in its own task, so without this the close would cancel
    them half-way: nothing would be lost (unacked deliveries return to the queue) but the
    work would be thrown away and done again by another replica."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """``False`` when deliveries are still being handled after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def consume(
    queue: AbstractQueue,
    adapter: TypeAdapter[T],
    handler: Handler[T],
    *,
    name: str,
    on_outcome: Callable[[str], None] | None = None,
    inflight: InFlight | None = None,
    transient_retry_s: float = TRANSIENT_RETRY_S,
) -> str:
    """Attach ``handler`` to ``queue`` with explicit ack/nack/reject; returns the consumer tag.

    invalid body -> reject without requeue (dead-lettered); handler exception -> nack with
    requeue (the queue's delivery limit dead-letters a poison message); a transient error
    (:data:`TRANSIENT_ERRORS`) -> the handler is tried again with backoff for up to
    ``transient_retry_s`` before the nack; success -> ack. Handlers are idempotent (they
    already are under redelivery), so running one again is safe. ``inflight`` counts the
    deliveries being handled (see :class:`InFlight`).
    """

    def outcome(o: str) -> None:
        if on_outcome is not None:
            on_outcome(o)

    async def on_message(message: AbstractIncomingMessage) -> None:
        if inflight is None:
            await handle_one(message)
            return
        with inflight:
            await handle_one(message)

    async def handle_one(message: AbstractIncomingMessage) -> None:
        try:
            msg = adapter.validate_json(message.body)
        except ValidationError as exc:
            log.error(
                "bus.invalid_message",
                consumer=name,
                errors=exc.error_count(),
                first_error=str(exc.errors()[0]["msg"]) if exc.errors() else "",
            )
            await message.reject(requeue=False)
            outcome("invalid")
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + transient_retry_s
        pause, longest = TRANSIENT_BACKOFF_S
        tries = 0
        while True:
            tries += 1
            try:
                await handler(msg, message)
                break
            except asyncio.CancelledError:
                await message.nack(requeue=True)
                raise
            except TRANSIENT_ERRORS as exc:
                if loop.time() + pause > give_up:
                    exc_to_requeue: Exception = exc
                else:
                    if tries == 1:
                        log.warning("bus.dependency_down_retrying", consumer=name, error=repr(exc))
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, longest)
                    continue
            except Exception as exc:
                exc_to_requeue = exc
            log.warning(
                "bus.handler_failed",
                consumer=name,
                error=repr(exc_to_requeue),
                redelivered=message.redelivered,
                tries=tries,
            )
            await message.nack(requeue=True)
            outcome("requeued")
            return
        if tries > 1:
            log.info("bus.dependency_back", consumer=name, tries=tries)
        await message.ack()
        outcome("ok")

    return await queue.consume(on_message)
