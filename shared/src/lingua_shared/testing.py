"""Pytest fixtures for real Redis and RabbitMQ (loaded by the root ``conftest.py``).

Servers are found in this order: URLs from the environment (``LINGUA_TEST_REDIS_URL`` /
``LINGUA_TEST_AMQP_URL``), a server already answering on loopback, then testcontainers when
a Docker engine answers. With none, the tests fail loudly: they never silently skip.

Isolation: tests use Redis database ``LINGUA_TEST_REDIS_DB`` (default 9), flushed before each
test, and a bus prefix unique to the test run whose queues and exchanges are deleted at the end.
With ``LINGUA_TEST_REDIS_CLUSTER_URL`` (``make test-cluster`` sets it) the Redis tests run on
that Redis Cluster instead, on its database 0, through the cluster client.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast
from urllib.parse import urlparse

import pytest
from redis.asyncio import Redis, RedisCluster

from lingua_shared.bus import delete_bus
from lingua_shared.keys import Keys
from lingua_shared.redisconn import redis_client
from lingua_shared.scripts import Scripts

TEST_DB = int(os.environ.get("LINGUA_TEST_REDIS_DB", "9"))


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


def _url_reachable(url: str, default_port: int) -> bool:
    u = urlparse(url)
    return port_open(u.hostname or "127.0.0.1", u.port or default_port)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """Base Redis URL (no database part)."""
    env = os.environ.get("LINGUA_TEST_REDIS_URL")
    if env:
        if not _url_reachable(env, 6379):
            pytest.fail(f"LINGUA_TEST_REDIS_URL={env} does not answer")
        yield env.rstrip("/").rsplit("/", 1)[0] if env.count("/") > 2 else env
        return
    if port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379"
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.0") as c:
            yield f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}"
        return
    pytest.fail(
        "no Redis: set LINGUA_TEST_REDIS_URL, start redis-server on 127.0.0.1:6379 "
        "(`make services`), or run a Docker engine for testcontainers"
    )


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    env = os.environ.get("LINGUA_TEST_AMQP_URL")
    if env:
        if not _url_reachable(env, 5672):
            pytest.fail(f"LINGUA_TEST_AMQP_URL={env} does not answer")
        yield env
        return
    if port_open("127.0.0.1", 5672):
        yield "amqp://guest:guest@127.0.0.1:5672/"
        return
    if _docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13") as c:
            yield (f"amqp://guest:guest@{c.get_container_host_ip()}:{c.get_exposed_port(5672)}/")
        return
    pytest.fail(
        "no RabbitMQ: set LINGUA_TEST_AMQP_URL, start rabbitmq-server on 127.0.0.1:5672 "
        "(`make services`), or run a Docker engine for testcontainers"
    )


# A Redis Cluster to run the Redis tests on instead (``make test-cluster`` starts one): its
# database 0 is the tests' own, flushed before each test like the single server's test DB.
CLUSTER_URL = os.environ.get("LINGUA_TEST_REDIS_CLUSTER_URL", "")
ON_CLUSTER = bool(CLUSTER_URL)


@pytest.fixture(scope="session")
def redis_url(redis_server_url: str) -> str:
    return CLUSTER_URL or f"{redis_server_url}/{TEST_DB}"


class _ClusterForTests(RedisCluster):
    """The cluster client, with ``KEYS`` asked of every master (redis-py sends it to one node,
    and the tests list a cell's keys to compare states)."""

    async def keys(self, pattern: Any = "*", **kw: Any) -> Any:
        kw.setdefault("target_nodes", RedisCluster.PRIMARIES)
        return await super().keys(pattern, **kw)


def redis_for_tests(url: str, cluster: bool | None = None) -> Redis:
    """A client of the tests' Redis: the cluster client when the tests run on a cluster (or
    when ``cluster`` says so)."""
    if ON_CLUSTER if cluster is None else cluster:
        client = _ClusterForTests.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return cast(Redis, client)  # the same commands, as in lingua_shared.redisconn
    return redis_client(url)


def sync_redis_for_tests(url: str, **kw: Any) -> Any:
    """The synchronous client of the tests' Redis (the property-based models use one)."""
    if ON_CLUSTER:
        from redis import RedisCluster as SyncCluster

        class SyncClusterForTests(SyncCluster):
            def keys(self, pattern: Any = "*", **kw: Any) -> Any:
                kw.setdefault("target_nodes", SyncCluster.PRIMARIES)
                return super().keys(pattern, **kw)

        return SyncClusterForTests.from_url(url, **kw)
    from redis import Redis as SyncRedis

    return SyncRedis.from_url(url, **kw)


needs_single_server = pytest.mark.skipif(
    ON_CLUSTER, reason="reads one server's MONITOR stream: a cluster has one per node"
)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_for_tests(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys("test")


@pytest.fixture
async def scripts(redis: Redis, keys: Keys) -> Scripts:
    return await Scripts.load(redis, keys)


@pytest.fixture(scope="session")
def bus_prefix(amqp_url: str) -> Iterator[str]:
    """A bus prefix unique to this test run; its queues and exchanges are deleted after."""
    prefix = f"lingua-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    asyncio.run(delete_bus(amqp_url, prefix))


# -- script arguments and state snapshots shared by the Lua tests ----------------------------
TEST_KEYS_PATTERN = Keys("test").prefix + "*"  # the fixtures' cell; other suites share the DB


def node_registration(node_id: str, **over: Any) -> dict[str, Any]:
    """Arguments of ``register_node_v2`` for an en-zh node in eu/a100; ``over`` gives
    ``now_ms`` and ``ttl_ms`` and replaces any other."""
    kw: dict[str, Any] = {
        "node_id": node_id,
        "region": "eu",
        "gpu_tier": "a100",
        "lang_sets": [["en", "zh"]],
        "capacity": 4,
        "services": {"asr": ["en", "zh"], "semantic": ["en", "zh"]},
        "gateway_id": "gw1",
        "conn_id": f"c-{node_id}",
    }
    kw.update(over)
    return kw


def node_beat(node_id: str, **over: Any) -> dict[str, Any]:
    """Arguments of ``heartbeat_with_pool_assign`` from the connection ``node_registration``
    names; ``over`` gives ``now_ms`` and replaces any other."""
    kw: dict[str, Any] = {"node_id": node_id, "conn_id": f"c-{node_id}", "gateway_id": "gw1"}
    kw.update(over)
    return kw


async def pooled_node(
    scripts: Any,
    node_id: str,
    lang_sets: list[list[str]],
    region: str = "eu",
    gpu_tier: str = "a100",
    *,
    now_ms: int,
    services: dict[str, list[str]],
) -> None:
    """A node registered and in its pools, as node-manager leaves it (``register_node_v2``,
    then ``heartbeat_with_pool_assign``), on gateway ``gw-1``, 4 slots, a minute's TTL."""
    await scripts.register_node_v2(
        **node_registration(
            node_id, now_ms=now_ms, ttl_ms=60_000, region=region, gpu_tier=gpu_tier,
            lang_sets=lang_sets, services=services, gateway_id="gw-1",
        )
    )  # fmt: skip
    hb = await scripts.heartbeat_with_pool_assign(
        **node_beat(node_id, now_ms=now_ms, gateway_id="gw-1")
    )
    assert hb.alive


async def key_snapshot(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key of the test cell, serialized, with its absolute expiry: equal snapshots mean
    nothing was written."""
    return {
        k: (await redis.dump(k), await redis.pexpiretime(k))
        for k in sorted(await redis.keys(TEST_KEYS_PATTERN))
    }
