"""The fault proxy itself: its RESP framing, and that each mode does what the recipes rely on
(against our own Redis, so a broken proxy cannot make a recipe pass by accident)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.faults.proxy import resp_command_name, resp_frame_end

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"+OK\r\n", 5),
        (b"$3\r\nabc\r\n", 9),
        (b"$-1\r\n", 5),
        (b"*2\r\n:1\r\n$1\r\nx\r\n+rest", 15),
        (b"*2\r\n:1\r\n$1\r\nx", None),  # incomplete
        (b"$3\r\nab", None),
        (b"%1\r\n+k\r\n:1\r\n", 12),  # RESP3 map
    ],
)
def test_resp_frame_end(data: bytes, end: int | None) -> None:
    assert resp_frame_end(data) == end


def test_resp_command_name() -> None:
    assert resp_command_name(b"*3\r\n$7\r\nevalsha\r\n$1\r\na\r\n$1\r\n0\r\n") == "EVALSHA"
    assert resp_command_name(b"PING\r\n") == "PING"


async def test_drop_replies_drops_only_the_named_commands(live_redis, proxy_factory):
    proxy = proxy_factory(live_redis.port, resp=True)
    client = Redis(port=proxy.port, socket_timeout=0.3, retry=None)
    try:
        proxy.set("drop_replies", every=2, commands=["ECHO"])
        assert await client.ping() is True  # not named: passes
        assert await client.echo("a") == b"a"  # 1st ECHO reply kept
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await client.echo("b")  # 2nd dropped
        assert proxy.counters.dropped == 1 and proxy.counters.dropped_by_command == {"ECHO": 1}
    finally:
        await client.aclose()


async def test_drop_replies_with_match_drops_only_requests_holding_it(live_redis, proxy_factory):
    proxy = proxy_factory(live_redis.port, resp=True)
    client = Redis(port=proxy.port, socket_timeout=0.3, retry=None)
    try:
        proxy.set("drop_replies", every=1, commands=["ECHO"], match=b"withheld")
        assert await client.echo("kept") == b"kept"
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await client.echo("withheld")
        assert proxy.counters.dropped == 1
    finally:
        await client.aclose()


async def test_blackhole_then_reset(live_redis, proxy_factory):
    proxy = proxy_factory(live_redis.port)
    client = Redis(port=proxy.port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=None)
    try:
        assert await client.ping() is True
        proxy.set("blackhole")
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await client.ping()
        proxy.set("pass")
        await client.connection_pool.disconnect()
        assert await client.ping() is True  # a new link passes again
        proxy.set("reset")
        with pytest.raises(RedisConnectionError):
            await client.ping()
        proxy.set("latency", ms=200)
        await client.connection_pool.disconnect()
        slow = Redis(port=proxy.port, socket_timeout=5)
        t0 = asyncio.get_running_loop().time()
        assert await slow.ping() is True
        assert asyncio.get_running_loop().time() - t0 >= 0.2
        await slow.aclose()
    finally:
        await client.aclose()
