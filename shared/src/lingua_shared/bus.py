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
The job path's publishes are *coalesced* (:meth:`Publisher.publish_batched`): the messages for
one exchange and routing key published in the same event-loop tick leave as one AMQP message
(type ``lingua.batch``, a JSON array of the messages), each caller still awaiting the broker's
confirm of its own message. One message in a tick leaves as itself, so an idle system sends
exactly what it did unbatched; under load the per-message costs (frames, confirms, acks, the
broker's queue work) are paid once per batch.
Consuming goes through :func:`consume`: undecodable -> dead-lettered at once; a handler
exception -> requeued, and the queue's delivery limit dead-letters a poison message; a
dependency outage (Redis down) is retried in place and does not count against that limit.
A batch is handled item by item with the same rules: an invalid item is dead-lettered alone, a
failed item is published back to its queue alone (where the delivery limit counts its tries),
then the batch is acked; nothing in it is lost with a bad neighbour.
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


BATCH_TYPE = "lingua.batch"  # AMQP ``type`` of a coalesced message: a JSON array of messages
BATCH_MAX_ITEMS = 64
BATCH_MAX_BYTES = 1 << 20  # an utterance's audio rides in job.request: bound the batch by size


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
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            reply_to=reply_to,
            correlation_id=correlation_id,
            expiration=expiration_s,
            type=kind,
            headers=headers,
        )
        target = self._exchanges[exchange] if exchange else self.channel.default_exchange
        try:
            await target.publish(
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
    publisher: Publisher | None = None,
) -> str:
    """Attach ``handler`` to ``queue`` with explicit ack/nack/reject; returns the consumer tag.

    invalid body -> reject without requeue (dead-lettered); handler exception -> nack with
    requeue (the queue's delivery limit dead-letters a poison message); a transient error
    (:data:`TRANSIENT_ERRORS`) -> the handler is tried again with backoff for up to
    ``transient_retry_s`` before the nack; success -> ack. Handlers are idempotent (they
    already are under redelivery), so running one again is safe. ``inflight`` counts the
    deliveries being handled (see :class:`InFlight`).

    A batch (``type`` :data:`BATCH_TYPE`) runs its messages concurrently, each by those rules;
    with a ``publisher``, an invalid one is dead-lettered alone and a failed one published
    back to ``queue`` alone before the batch is acked. Without one, any failure requeues the
    whole batch (its good messages run again: handlers are idempotent).
    """

    def outcome(o: str) -> None:
        if on_outcome is not None:
            on_outcome(o)

    async def on_message(message: AbstractIncomingMessage) -> None:
        handle = handle_batch if message.type == BATCH_TYPE else handle_one
        if inflight is None:
            await handle(message)
            return
        with inflight:
            await handle(message)

    def invalid(exc: ValidationError) -> None:
        log.error(
            "bus.invalid_message",
            consumer=name,
            errors=exc.error_count(),
            first_error=str(exc.errors()[0]["msg"]) if exc.errors() else "",
        )
        outcome("invalid")

    async def run(msg: T, message: AbstractIncomingMessage) -> Exception | None:
        """Run the handler, retrying transient errors in place; the error to requeue for."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + transient_retry_s
        pause, longest = TRANSIENT_BACKOFF_S
        tries = 0
        while True:
            tries += 1
            try:
                await handler(msg, message)
                break
            except TRANSIENT_ERRORS as exc:
                if loop.time() + pause > give_up:
                    failed: Exception = exc
                else:
                    if tries == 1:
                        log.warning("bus.dependency_down_retrying", consumer=name, error=repr(exc))
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, longest)
                    continue
            except Exception as exc:
                failed = exc
            log.warning(
                "bus.handler_failed",
                consumer=name,
                error=repr(failed),
                redelivered=message.redelivered,
                tries=tries,
            )
            outcome("requeued")
            return failed
        if tries > 1:
            log.info("bus.dependency_back", consumer=name, tries=tries)
        outcome("ok")
        return None

    async def handle_one(message: AbstractIncomingMessage) -> None:
        try:
            msg = adapter.validate_json(message.body)
        except ValidationError as exc:
            invalid(exc)
            await message.reject(requeue=False)
            return
        try:
            failed = await run(msg, message)
        except asyncio.CancelledError:
            await message.nack(requeue=True)
            raise
        if failed is not None:
            await message.nack(requeue=True)
        else:
            await message.ack()

    async def handle_item(raw: Any, message: AbstractIncomingMessage) -> tuple[str, Any]:
        try:
            msg = adapter.validate_python(raw)
        except ValidationError as exc:
            invalid(exc)
            return "invalid", raw
        failed = await run(msg, message)
        return ("failed", raw) if failed is not None else ("ok", None)

    async def handle_batch(message: AbstractIncomingMessage) -> None:
        try:
            items = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            items = None
        if not isinstance(items, list):
            log.error("bus.invalid_batch", consumer=name, size=len(message.body))
            outcome("invalid")
            await message.reject(requeue=False)
            return
        try:
            results = await asyncio.gather(*(handle_item(raw, message) for raw in items))
        except asyncio.CancelledError:
            await message.nack(requeue=True)
            raise
        left = [(what, raw) for what, raw in results if what != "ok"]
        if not left:
            await message.ack()
            return
        if publisher is None:
            await message.nack(requeue=True)
            return
        try:
            for what, raw in left:
                body = orjson.dumps(raw)
                if what == "invalid":
                    await publisher.dead_letter(body, "invalid")
                else:
                    kind = raw.get("kind") if isinstance(raw, dict) else None
                    await publisher.resend(
                        queue.name, body, kind if isinstance(kind, str) else None
                    )
        except (TimeoutError, LinguaError) as exc:
            # the broker would not take them: the whole batch comes back instead
            log.warning("bus.batch_resend_failed", consumer=name, error=repr(exc))
            await message.nack(requeue=True)
            return
        log.info("bus.batch_items_resent", consumer=name, items=len(left), of=len(items))
        await message.ack()

    return await queue.consume(on_message)
