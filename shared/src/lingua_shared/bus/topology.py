"""The RabbitMQ topology as data, and its declaration.

Names are prefixed by ``Settings.bus_prefix`` (default ``lingua``)::

    <p>.events    topic exchange, durable: node.register, node.heartbeat.batch, node.disconnected,
                  job.request, job.node_event
    <p>.deliver   direct exchange, durable: routing key = gateway instance id
    <p>.dlx       fanout exchange, durable: dead letters
    <p>.dead      quorum queue bound to <p>.dlx: messages that were rejected or hit the limit
    <p>.node-manager.events   quorum queue, x-delivery-limit, dead-lettered to <p>.dlx:
                              registrations and disconnections
    <p>.node-manager.heartbeats  the same kind of queue, for heartbeat batches alone: a batch
                              never waits behind a storm of registrations (node-manager
                              consumes both at once), so registered nodes stay alive while
                              thousands of others register
    <p>.dispatcher.events     quorum queue, x-delivery-limit, dead-lettered to <p>.dlx
    <p>.gateway.<instance>    classic exclusive queue per gateway replica, bound to <p>.deliver

The four durable queues are quorum queues unless ``queue_type`` (``LINGUA_AMQP_QUEUE_TYPE``)
says ``classic``: durable classic queues, for measuring what the quorum queues cost. Classic
queues have no delivery limit (RabbitMQ refuses ``x-delivery-limit`` on them), so a message
whose handler always fails is requeued for ever instead of dead-lettered, and they are not
replicated across a cluster: a setting for comparisons, not for production.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

NODE_MANAGER_KEYS = ("node.register", "node.disconnected")
NODE_MANAGER_HEARTBEAT_KEYS = ("node.heartbeat.batch",)
# bindings an earlier version made and this one removes at start-up: (queue property, key)
RETIRED_BINDINGS = (("node_manager_queue", "node.heartbeat.batch"),)
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


QUEUE_TYPES = ("quorum", "classic")


@dataclass(frozen=True)
class Topology:
    prefix: str = "lingua"
    delivery_limit: int = 5
    max_length: int = 100_000  # work queues: beyond it publishes are refused (nacked)
    queue_type: str = "quorum"  # of the durable queues: quorum | classic (see the module doc)

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be one of {QUEUE_TYPES}, not {self.queue_type!r}")

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
    def node_manager_heartbeat_queue(self) -> str:
        return f"{self.prefix}.node-manager.heartbeats"

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
        limit = {"x-delivery-limit": self.delivery_limit} if self.queue_type == "quorum" else {}
        return {
            "x-queue-type": self.queue_type,
            **limit,
            "x-dead-letter-exchange": self.dlx,
            # a bounded backlog: a publish beyond it is nacked, so the publisher (which waits
            # for confirms) sees the refusal and answers a typed error instead of queueing
            # without limit
            "x-max-length": self.max_length,
            "x-overflow": "reject-publish",
        }

    def shared_queues(self) -> list[QueueSpec]:
        return [
            QueueSpec(self.dead, ((self.dlx, ""),), arguments={"x-queue-type": self.queue_type}),
            QueueSpec(
                self.node_manager_queue,
                tuple((self.events, k) for k in NODE_MANAGER_KEYS),
                arguments=self.work_queue_args(),
            ),
            QueueSpec(
                self.node_manager_heartbeat_queue,
                tuple((self.events, k) for k in NODE_MANAGER_HEARTBEAT_KEYS),
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
    ``get_queue(ensure=False)``: a robust channel restores after a reconnect only the queues
    it declared, and with them their consumers; a consumer on an undeclared queue would be
    silently gone after a broker restart while ``/readyz`` stays green."""
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
    for prop, key in RETIRED_BINDINGS:
        # unbinding a binding that does not exist is a no-op for RabbitMQ; the queue was just
        # declared above (this handle is used for nothing else)
        queue = await channel.get_queue(getattr(topo, prop), ensure=False)
        await queue.unbind(topo.events, routing_key=key)


class TopologyMismatch(RuntimeError):
    """A queue already exists with other arguments; RabbitMQ cannot change them in place."""
