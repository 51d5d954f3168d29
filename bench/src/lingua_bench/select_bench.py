"""``select_node.lua`` alone: the cost of one scheduling decision as the pool grows.

Pools of 10, 1,000 and 10,000 registered nodes of one language pair (one pool group, split
by the heartbeat script into shards of at most 256 members: 10,000 nodes are 40 shards), in
one cell of their own. Each sample is one EVALSHA of ``select_node`` for a fresh job (created
beforehand, untimed) through the same async redis-py client the dispatcher uses; its slot is
then released (``job_release``, untimed) so capacity never runs out.

The figure is a client round trip. ``baseline_us`` is the p50 of an EVALSHA of an empty
script with the same keys and arguments on the same connection: ``p50_us - baseline_us`` is
roughly what the script itself costs inside Redis.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from redis.asyncio import Redis

from lingua_bench._base_common import (
    DEFAULT_REDIS_URL,
    PAIR,
    BenchError,
    Latency,
    delete_cell,
    emit,
    log,
    register_pool,
    run_async,
    unique_prefix,
)
from lingua_shared.keys import Keys
from lingua_shared.scripts import ScriptCode, Scripts, job_create, job_release, select_node

POOL_SIZES = (10, 1_000, 10_000)
CANDIDATES_PER_SHARD = 8  # as the dispatcher asks
SERVICES = ["asr", "semantic"]
EMPTY_SCRIPT = "return 0"


def _select_kw(job_id: str, now: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": 1,
        "now_ms": now,
        "lease_ms": 3_000,
        "pair_src": PAIR[0],
        "pair_tgt": PAIR[1],
        "services": SERVICES,
        "policy": "pack",
        "candidates": CANDIDATES_PER_SHARD,
        "wait_until_ms": 0,
        "retry_ms": 100,
    }


async def _create_jobs(s: Scripts, redis: Redis, ids: list[str], now: int) -> None:
    await s.run_all(
        job_create,
        [
            {
                "request_key": f"bench:{job_id}",
                "job_id": job_id,
                "now_ms": now,
                "ttl_ms": 600_000,
                "fields": {"session_id": f"bs-{job_id}", "utterance_index": i},
                "audio": "",
            }
            for i, job_id in enumerate(ids)
        ],
        return_exceptions=False,
    )


async def _baseline(redis: Redis, s: Scripts, samples: int) -> Latency:
    """EVALSHA of an empty script with select_node's keys and arguments."""
    empty = redis.register_script(EMPTY_SCRIPT)
    k, a = s.select_node_args(**_select_kw("baseline", int(time.time() * 1000)))
    lat = Latency()
    for i in range(samples + samples // 10):
        t = time.perf_counter_ns()
        await empty(keys=k, args=a)
        if i >= samples // 10:
            lat.record_ns(time.perf_counter_ns() - t)
    return lat


async def _measure(s: Scripts, redis: Redis, samples: int, warmup: int, tag: str) -> Latency:
    select, release = s.script("select_node"), s.script("job_release")
    lat = Latency()
    total = samples + warmup
    chunk = 500
    done = 0
    while done < total:
        n = min(chunk, total - done)
        now = int(time.time() * 1000)
        ids = [f"{tag}-{done + i}" for i in range(n)]
        await _create_jobs(s, redis, ids, now)
        for job_id in ids:
            k, a = s.select_node_args(**_select_kw(job_id, now))
            t = time.perf_counter_ns()
            reply = await select(keys=k, args=a)
            elapsed = time.perf_counter_ns() - t
            sel = select_node.parse(reply)
            if sel.code != ScriptCode.RESERVED:
                raise BenchError(f"select_node found no node: {sel}")
            if done >= warmup:
                lat.record_ns(elapsed)
            done += 1
            k, a = s.job_release_args(
                job_id=job_id, attempt=1, reason="bench", now_ms=now, max_attempts=9
            )
            r = job_release.parse(await release(keys=k, args=a))
            if r.code != ScriptCode.RELEASED:
                raise BenchError(f"job_release did not release: {r}")
    return lat


async def arun(
    redis_url: str = DEFAULT_REDIS_URL,
    samples: int = 3_000,
    sizes: tuple[int, ...] = POOL_SIZES,
) -> dict[str, Any]:
    if list(sizes) != sorted(sizes) or not sizes or sizes[0] < 1:
        raise ValueError(f"pool sizes must be positive and ascending: {sizes}")
    cell = unique_prefix("sel")
    redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    out: dict[str, Any] = {}
    try:
        s = await Scripts.load(redis, Keys(cell))
        base = await _baseline(redis, s, samples)
        baseline_us = base.us(50)
        registered = 0
        for size in sizes:
            await register_pool(s, redis, size - registered, start=registered)
            registered = size
            shards = await redis.scard(f"{s.keys.prefix}pair:{PAIR[0]}:{PAIR[1]}")
            lat = await _measure(s, redis, samples, max(100, samples // 10), f"j{size}")
            out[f"pool_{size}"] = {
                "p50_us": lat.us(50),
                "p99_us": lat.us(99),
                "max_us": lat.us(100),
                "samples": lat.count,
                "shards": int(shards),
                "baseline_us": baseline_us,
            }
            log("select", pool=size, shards=shards, p50_us=lat.us(50), p99_us=lat.us(99))
        out["baseline"] = {"p50_us": baseline_us, "p99_us": base.us(99)}
        small, large = f"pool_{sizes[0]}", f"pool_{sizes[-1]}"
        out["p99_large_over_small"] = round(out[large]["p99_us"] / out[small]["p99_us"], 2)
    finally:
        await delete_cell(redis, cell)
        await redis.aclose()
    return out


def run(
    redis_url: str = DEFAULT_REDIS_URL,
    samples: int = 3_000,
    sizes: tuple[int, ...] = POOL_SIZES,
) -> dict[str, Any]:
    """``{"pool_10": {"p50_us", "p99_us", ...}, "pool_1000": ..., "pool_10000": ...}``."""
    return run_async(arun(redis_url, samples, sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    ap.add_argument("--samples", type=int, default=3_000)
    args = ap.parse_args()
    emit(run(args.redis_url, args.samples))


if __name__ == "__main__":
    main()
