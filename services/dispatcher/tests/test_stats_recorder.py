"""The dispatcher's stats recorder: counters land in Redis in one flush, failures are dropped."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from lingua_dispatcher.stats_recorder import LATENCY_BUCKETS_MS, StatsRecorder, bucket_ms
from lingua_shared.keys import Keys

NOW = 1_700_000_000_000


def test_buckets_are_upper_bounds():
    assert bucket_ms(0) == 1 and bucket_ms(1) == 1 and bucket_ms(1.2) == 2
    assert bucket_ms(8) == 10 and bucket_ms(1_000) == 1_000 and bucket_ms(1_001) == 2_000
    assert bucket_ms(10**9) == LATENCY_BUCKETS_MS[-1]


async def test_counters_and_buckets_land_in_one_flush(redis, keys):
    rec = StatsRecorder(redis, keys)
    rec.dispatched(4, ts_ms=NOW)
    rec.dispatched(4.5, ts_ms=NOW + 999)
    rec.dispatched(120, ts_ms=NOW + 1_000)
    rec.done("en", "zh", 42, ts_ms=NOW)
    rec.done("en", "zh", None, ts_ms=NOW)
    rec.failed(
        "JOB_TIMEOUT", "took too long", src="ja", tgt="en", session_id="s1", job_id="j1", ts_ms=NOW
    )

    calls: list[int] = []
    real_pipeline = redis.pipeline

    def counting_pipeline(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_pipeline(*a, **kw)

    redis.pipeline = counting_pipeline
    assert await rec.flush()
    redis.pipeline = real_pipeline
    assert calls == [1]  # one pipelined round trip for everything

    first = await redis.hgetall(keys.stats_second(NOW // 1000))
    assert {k.decode(): int(v) for k, v in first.items()} == {
        "d:5": 2,
        "done": 2,
        "pair:en->zh": 2,
        "r:50": 1,
        "failed": 1,
        "err:JOB_TIMEOUT": 1,
        "pair:ja->en": 1,
    }
    second = await redis.hgetall(keys.stats_second(NOW // 1000 + 1))
    assert second == {b"d:150": b"1"}
    assert 3_590 <= await redis.ttl(keys.stats_second(NOW // 1000)) <= 3_600

    errors = [json.loads(e) for e in await redis.lrange(keys.recent_errors, 0, -1)]
    assert errors == [
        {
            "ts_ms": NOW,
            "code": "JOB_TIMEOUT",
            "message": "took too long",
            "session_id": "s1",
            "job_id": "j1",
        }
    ]

    # counters were cleared by the flush: a second flush adds nothing
    assert await rec.flush()
    assert int(await redis.hget(keys.stats_second(NOW // 1000), "done")) == 2


async def test_recent_errors_are_trimmed_to_50(redis, keys):
    rec = StatsRecorder(redis, keys)
    for i in range(60):
        rec.failed("INTERNAL_ERROR", f"e{i}", ts_ms=NOW + i)
    await rec.flush()
    stored = await redis.lrange(keys.recent_errors, 0, -1)
    assert len(stored) == 50
    assert json.loads(stored[0])["message"] == "e59"  # newest first


async def test_a_redis_error_in_flush_is_dropped_not_raised(redis, keys):
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    rec = StatsRecorder(dead, Keys("test"))
    rec.done("en", "zh", 10, ts_ms=NOW)
    rec.failed("JOB_TIMEOUT", "x", ts_ms=NOW)
    assert await rec.flush() is False
    assert await rec.flush() is True  # dropped: nothing left to write
    await rec.stop()  # the shutdown flush does not raise either
    await dead.aclose()


async def test_start_flushes_periodically_and_stop_flushes_the_rest(redis, keys):
    rec = StatsRecorder(redis, keys, flush_s=0.05)
    await rec.start()
    rec.done("en", "zh", 10, ts_ms=NOW)
    for _ in range(40):
        if await redis.exists(keys.stats_second(NOW // 1000)):
            break
        await asyncio.sleep(0.025)
    assert await redis.hget(keys.stats_second(NOW // 1000), "done") == b"1"
    rec.done("en", "zh", 10, ts_ms=NOW)
    await rec.stop()
    assert await redis.hget(keys.stats_second(NOW // 1000), "done") == b"2"
