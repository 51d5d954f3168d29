"""``TickPipeline`` against the real Redis: the script calls of one loop tick share one round
trip, each caller gets its own reply or its own error, and NOSCRIPT never reaches a caller."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from lingua_shared.devstack import free_port
from lingua_shared.scripts import CachedScript, TickPipeline
from lingua_shared.testing import redis_for_tests

ECHO_OR_FAIL = """-- {tag}
if ARGV[1] == 'bad' then return redis.error_reply('bad input ' .. KEYS[1]) end
return {{KEYS[1], ARGV[1]}}
"""


def script(client: Redis) -> CachedScript:
    return CachedScript(client, ECHO_OR_FAIL.format(tag=uuid.uuid4().hex))


async def test_one_ticks_calls_share_a_round_trip_and_each_gets_its_reply(redis_url: str):
    client = redis_for_tests(redis_url)
    try:
        s, tp = script(client), TickPipeline(client)
        await client.script_load(s.script)
        replies = await asyncio.gather(*(tp.call(s, [f"k{i}"], [str(i)]) for i in range(20)))
        assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(20)]
        assert (tp.round_trips, tp.calls) == (1, 20)
        assert await tp.call(s, ["alone"], ["x"]) == [b"alone", b"x"]
        assert tp.round_trips == 2
    finally:
        await client.aclose()


async def test_an_error_reaches_only_its_own_caller(redis_url: str):
    client = redis_for_tests(redis_url)
    try:
        s, tp = script(client), TickPipeline(client)
        await client.script_load(s.script)
        replies = await asyncio.gather(
            tp.call(s, ["a"], ["ok"]),
            tp.call(s, ["b"], ["bad"]),
            tp.call(s, ["c"], ["ok"]),
            return_exceptions=True,
        )
        assert replies[0] == [b"a", b"ok"] and replies[2] == [b"c", b"ok"]
        assert isinstance(replies[1], ResponseError) and "bad input b" in str(replies[1])
        assert tp.round_trips == 1
    finally:
        await client.aclose()


async def test_a_script_redis_has_not_cached_still_runs_for_every_caller(redis_url: str):
    """The pipelined EVALSHAs all answer NOSCRIPT (as after a restart or SCRIPT FLUSH); each
    call falls back to EVAL and none sees the error."""
    client = redis_for_tests(redis_url)
    try:
        s, tp = script(client), TickPipeline(client)
        assert await client.script_exists(s.sha) == [False]
        replies = await asyncio.gather(*(tp.call(s, [f"k{i}"], ["v"]) for i in range(5)))
        assert replies == [[f"k{i}".encode(), b"v"] for i in range(5)]
    finally:
        await client.aclose()


async def test_redis_away_fails_every_caller_with_a_connection_error():
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        s, tp = script(client), TickPipeline(client)
        replies = await asyncio.gather(
            *(tp.call(s, ["k"], ["v"]) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, (RedisConnectionError, OSError)) for r in replies), replies
    finally:
        await client.aclose()


async def test_a_cancelled_caller_does_not_disturb_the_others(redis_url: str):
    client = redis_for_tests(redis_url)
    try:
        s, tp = script(client), TickPipeline(client)
        await client.script_load(s.script)
        keep = asyncio.ensure_future(tp.call(s, ["keep"], ["1"]))
        drop = asyncio.ensure_future(tp.call(s, ["drop"], ["2"]))
        await asyncio.sleep(0)
        drop.cancel()
        assert await keep == [b"keep", b"1"]
        with pytest.raises(asyncio.CancelledError):
            await drop
    finally:
        await client.aclose()
