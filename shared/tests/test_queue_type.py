"""The durable queues' type is a setting (``LINGUA_AMQP_QUEUE_TYPE``): quorum by default,
classic on demand so that what quorum queues cost can be measured again."""

from __future__ import annotations

import uuid

import aio_pika
import pytest

from lingua_shared.bus import Topology, delete_topology
from lingua_shared.runtime import Infra
from lingua_shared.settings import Settings


def test_quorum_by_default_classic_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().amqp_queue_type == "quorum"
    assert Topology().work_queue_args()["x-queue-type"] == "quorum"
    assert Topology().work_queue_args()["x-delivery-limit"] == 5
    monkeypatch.setenv("LINGUA_AMQP_QUEUE_TYPE", "classic")
    assert Settings().amqp_queue_type == "classic"
    args = Topology(queue_type="classic").work_queue_args()
    # RabbitMQ refuses x-delivery-limit on a classic queue
    assert args["x-queue-type"] == "classic" and "x-delivery-limit" not in args
    monkeypatch.setenv("LINGUA_AMQP_QUEUE_TYPE", "stream")
    with pytest.raises(ValueError):
        Settings()
    with pytest.raises(ValueError):
        Topology(queue_type="stream")


async def is_quorum(conn: aio_pika.abc.AbstractConnection, prefix: str, name: str) -> bool:
    """Redeclaring with the quorum topology's arguments succeeds only on a quorum queue."""
    args = Topology(prefix, queue_type="quorum").shared_queue_spec(name).arguments
    ch = await conn.channel()
    try:
        await ch.declare_queue(name, durable=True, arguments=args)
    except aio_pika.exceptions.ChannelPreconditionFailed:
        return False
    await ch.close()
    return True


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_infra_declares_the_configured_type(
    queue_type: str, redis_url: str, amqp_url: str
) -> None:
    prefix = f"lingua-qt-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_url, amqp_url=amqp_url, bus_prefix=prefix, cell=prefix,
        amqp_queue_type=queue_type,
    )  # fmt: skip
    conn = await aio_pika.connect_robust(amqp_url, timeout=5)
    try:
        async with Infra.open(settings) as infra:
            assert infra.topo.queue_type == queue_type
            # the work queue carries messages either way
            ch = await conn.channel()
            queue = await ch.declare_queue(infra.topo.dispatcher_queue, passive=True)
            await ch.default_exchange.publish(
                aio_pika.Message(b"x"), routing_key=infra.topo.dispatcher_queue
            )
            msg = await queue.get(timeout=5, fail=False)
            assert msg is not None and msg.body == b"x"
            await msg.ack()
        for name in (infra.topo.dispatcher_queue, infra.topo.node_manager_queue, infra.topo.dead):
            assert await is_quorum(conn, prefix, name) == (queue_type == "quorum")
    finally:
        await delete_topology(conn, Topology(prefix))
        await conn.close()
