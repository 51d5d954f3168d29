"""``node.register`` as an RPC over the bus: node-manager answers on this replica's queue.

A node must not get its ack (and start expecting jobs) before Redis holds its record, so the
gateway waits for node-manager's reply (``RegisterReply``, matched by correlation id).

The queue is bounded: at most ``register_max_inflight`` registrations of this replica are on
the bus at once, the others wait for a slot in arrival order. A storm (thousands of nodes
reconnecting) then never puts thousands of registrations in node-manager's queue ahead of the
heartbeat batches that keep the registered nodes alive; it is served at node-manager's pace.
Nothing is refused for slowness: a registration waits for its slot, then for its reply.
"""

from __future__ import annotations

import asyncio
import contextlib

from lingua_gateway.metrics import Metrics
from lingua_gateway.ports import EventPublisher
from lingua_shared.events import NodeRegisterEvent, RegisterReply
from lingua_shared.logs import get_logger
from lingua_shared.settings import Settings

log = get_logger(__name__)


class RegisterRpc:
    def __init__(self, publisher: EventPublisher, settings: Settings, metrics: Metrics) -> None:
        self.publisher = publisher
        self.settings = settings
        self.metrics = metrics
        self.pending: dict[str, asyncio.Future[RegisterReply]] = {}
        self.slots = asyncio.Semaphore(settings.register_max_inflight)

    def resolve(self, correlation_id: str, reply: RegisterReply) -> None:
        """node-manager's reply: it answers the call waiting for it, if any."""
        fut = self.pending.get(correlation_id)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    async def __call__(self, event: NodeRegisterEvent, correlation_id: str) -> RegisterReply:
        """Wait for a slot (see the module docstring), then :meth:`call`."""
        if self.slots.locked():
            self.metrics.registrations_queued.inc()
            try:
                await self.slots.acquire()
            finally:
                self.metrics.registrations_queued.dec()
        else:
            await self.slots.acquire()
        try:
            return await self.call(event, correlation_id)
        finally:
            self.slots.release()

    async def call(self, event: NodeRegisterEvent, correlation_id: str) -> RegisterReply:
        """Publish a registration and wait for node-manager's reply, however long it takes.

        A registering node is held, never refused for slowness: lingua's agent has no timeout
        on its ack and retries a closed socket only once, so a registration storm must queue.
        The request is published again every ``register_republish_s`` (the reply to any copy
        answers; node-manager's script makes a copy a refresh) and again after a failed
        publish (a confirm timeout of a slow broker, or a broker down), with a growing
        pause: the node's ack comes later, it is never refused. The caller cancels it (the
        socket closed)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[RegisterReply] = loop.create_future()
        self.pending[correlation_id] = fut
        started = loop.time()
        next_publish, retry, slow = started, 0.5, False
        try:
            while True:
                if loop.time() >= next_publish:
                    try:
                        await self.publisher.event(
                            "node.register",
                            event,
                            reply_to=s.instance_id,
                            correlation_id=correlation_id,
                        )
                        next_publish, retry = loop.time() + s.register_republish_s, 0.5
                    except Exception as exc:
                        self.metrics.publish_failures.labels("node_register").inc()
                        log.warning(
                            "gateway.register_publish_failed",
                            node_id=event.node_id,
                            error=repr(exc),
                        )
                        next_publish, retry = loop.time() + retry, min(retry * 2, 10.0)
                wait = next_publish - loop.time()
                if not slow:
                    wait = min(wait, started + s.register_timeout_s - loop.time())
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(fut), max(0.0, wait))
                if not slow and loop.time() >= started + s.register_timeout_s:
                    slow = True
                    self.metrics.registrations_slow.inc()
                    log.warning(
                        "gateway.registration_slow",
                        node_id=event.node_id,
                        conn_id=event.conn_id,
                        waited_s=s.register_timeout_s,
                    )
        finally:
            self.pending.pop(correlation_id, None)
