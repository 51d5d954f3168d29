"""Fixtures of the fault suite: our own Redis and RabbitMQ (started once per session, restarted
by the recipes that kill them), the fault proxy, and the services as real processes.

Timings are short (heartbeats 200 ms, node TTL 1 s, ack timeout 1 s) so that every recipe runs
in seconds; the code paths are the production ones. What the recipes call (``start_all``,
``wait_ready``, sessions, node processes) is in ``tests/support`` and ``workload.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.faults.proxy import FaultProxy
from tests.faults.servers import OwnRabbit, OwnRedis
from tests.support.stack import JOB_ENV, STACK_ENV, Stack, started_stack

# Every stack's short timings and the job path's timers; AMQP connects give up after 2 s.
FAULT_ENV = {**STACK_ENV, **JOB_ENV, "LINGUA_AMQP_CONNECT_TIMEOUT_S": "2"}


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path_factory.mktemp("own-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def own_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRabbit]:
    server = OwnRabbit(tmp_path_factory.mktemp("own-rabbit"))
    server.start(timeout=90)
    yield server
    server.stop()


# A single-node RabbitMQ 3.10 SIGKILLed within seconds of declaring a quorum queue brings
# that queue back without a leader ("leader not known"), for good: consumers and confirms
# hang on it. Seen here with queues 3 s old; with queues 15 s old it recovers. Production
# queues are old, so the recipes that kill the broker use a topology declared when the broker
# starts, and wait until it is that old.
QUORUM_SETTLE_S = 15.0


@dataclass
class AgedBus:
    prefix: str
    declared_at: float

    def wait_until_settled(self) -> None:
        left = self.declared_at + QUORUM_SETTLE_S - time.monotonic()
        if left > 0:
            time.sleep(left)


@pytest.fixture(scope="session")
def aged_bus(own_rabbit: OwnRabbit) -> AgedBus:
    from lingua_shared.bus import Topology, declare_topology

    prefix = f"faults-aged-{uuid.uuid4().hex[:6]}"

    async def declare() -> None:
        import aio_pika

        conn = await aio_pika.connect(own_rabbit.url, timeout=10)
        try:
            await declare_topology(await conn.channel(), Topology(prefix, 5))
        finally:
            await conn.close()

    asyncio.run(declare())
    return AgedBus(prefix, time.monotonic())


@pytest.fixture
def live_redis(own_redis: OwnRedis) -> OwnRedis:
    """Our Redis, running (a recipe before may have killed it)."""
    if not own_redis.alive() or not own_redis.ready():
        own_redis.restart()
    return own_redis


@pytest.fixture
def live_rabbit(own_rabbit: OwnRabbit) -> OwnRabbit:
    if not own_rabbit.alive() or not own_rabbit.ready():
        own_rabbit.restart()
    return own_rabbit


@pytest.fixture
async def fredis(live_redis: OwnRedis) -> AsyncIterator[Redis]:
    """A client of our own Redis, flushed (database 0 is ours alone)."""
    client = Redis.from_url(live_redis.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., FaultProxy]]:
    made: list[FaultProxy] = []

    def make(target_port: int, **kw: object) -> FaultProxy:
        p = FaultProxy(target_port, **kw).start()  # type: ignore[arg-type]
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def fault_env(live_redis: OwnRedis, live_rabbit: OwnRabbit, aged_bus: AgedBus) -> dict[str, str]:
    """Service settings against our own servers, with a bus prefix of this test alone
    (queue arguments such as the delivery limit are fixed when a queue is declared)."""
    return {
        **FAULT_ENV,
        "LINGUA_REDIS_URL": live_redis.url,
        "LINGUA_AMQP_URL": live_rabbit.url,
        "LINGUA_BUS_PREFIX": f"faults-{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture
def fstack(
    fredis: Redis, fault_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """An empty stack on our own servers; the test starts what it needs with ``start``.
    Processes a recipe killed are not asked to exit cleanly; the others are."""
    with started_stack(fault_env, tmp_path, request, killed_ok=True) as s:
        yield s
