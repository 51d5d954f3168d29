"""Pytest fixtures for real Redis and RabbitMQ (loaded by the root ``conftest.py``).

Servers are found in this order: URLs from the environment (``LINGUA_TEST_REDIS_URL`` /
``LINGUA_TEST_AMQP_URL``), a server already answering on loopback, then testcontainers when
a Docker engine answers. With none, the tests fail loudly: they never silently skip.

Isolation: tests use Redis database ``LINGUA_TEST_REDIS_DB`` (default 9), flushed before each
test, and a bus prefix unique to the test run whose queues and exchanges are deleted at the end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from redis.asyncio import Redis

from lingua_shared.bus import delete_bus
from lingua_shared.keys import Keys
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


@pytest.fixture(scope="session")
def redis_url(redis_server_url: str) -> str:
    return f"{redis_server_url}/{TEST_DB}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
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


async def key_snapshot(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key of the test cell, serialized, with its absolute expiry: equal snapshots mean
    nothing was written."""
    return {
        k: (await redis.dump(k), await redis.pexpiretime(k))
        for k in sorted(await redis.keys(TEST_KEYS_PATTERN))
    }
