"""Stats snapshot figures (MISSION S1), never assertions: build time and GET latency.

Registers nodes with pipelined register + heartbeat scripts (cell ``benchstats``, DB 11 by
default), then times :func:`build_snapshot` (median and max of 5) and ``GET /api/v1/stats``
through ``httpx.ASGITransport`` (p99 of 2,000 requests) at 10 and at 10,000 nodes. The GET
figure should not grow with the node count: the request only copies pre-serialized bytes.
Run alone (``python scripts/bench_stats.py``) or from ``scripts/bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import httpx
from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.runtime import now_ms
from lingua_shared.scripts import Scripts
from lingua_shared.settings import Settings
from lingua_stats.app import create_app
from lingua_stats.snapshot import build_snapshot
from lingua_stats.snapshot_model import CatalogView

CELL = "benchstats"
LANG_SETS = ([["en", "zh"]], [["en", "ja", "zh"]], [["en", "zh"], ["de", "en", "fr"]])


async def register_nodes(s: Scripts, redis: Redis, start: int, count: int, batch: int) -> None:
    now = now_ms()
    reg, hb = s.script("register_node_v2"), s.script("heartbeat_with_pool_assign")
    for i in range(start, start + count, batch):
        async with redis.pipeline(transaction=False) as pipe:
            for j in range(i, min(i + batch, start + count)):
                node_id = f"bs-{j:05d}"
                k, a = s.register_node_v2_args(
                    node_id=node_id,
                    now_ms=now,
                    ttl_ms=600_000,
                    region=("eu", "us", "ap")[j % 3],
                    gpu_tier=("a100", "t4")[j % 2],
                    lang_sets=LANG_SETS[j % 3],
                    capacity=4,
                    services={"asr": ["en", "zh"], "semantic": ["en", "zh"]},
                    gateway_id="bench",
                    conn_id=node_id,
                )
                await reg(keys=k, args=a, client=pipe)
                k, a = s.heartbeat_args(
                    node_id=node_id, conn_id=node_id, gateway_id="bench", now_ms=now
                )
                await hb(keys=k, args=a, client=pipe)
            await pipe.execute()


async def measure(settings: Settings, redis: Redis, keys: Keys, gets: int) -> dict[str, float]:
    scripts = await Scripts.load(redis, keys)
    builds = []
    for _ in range(5):
        snap = await build_snapshot(scripts, settings, CatalogView(), now_ms())
        builds.append(snap.build_ms)
    app = create_app(settings)
    lat = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://b") as client,
    ):
        for _ in range(50):
            await client.get("/api/v1/stats")
        for _ in range(gets):
            t = time.perf_counter()
            r = await client.get("/api/v1/stats")
            lat.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200
    lat.sort()
    return {
        "build_ms_median": round(statistics.median(builds), 2),
        "build_ms_max": round(max(builds), 2),
        "get_p99_ms": round(lat[int(len(lat) * 0.99) - 1], 3),
        "get_p50_ms": round(statistics.median(lat), 3),
        "snapshot_bytes": len(r.content),
    }


async def run(redis_url: str, nodes: int = 10_000, gets: int = 2_000) -> dict[str, object]:
    # a long interval: no background rebuild competes with the measured requests
    settings = Settings(
        redis_url=redis_url, cell=CELL, bus_prefix="lingua-bench", stats_interval_s=3600
    )
    redis = Redis.from_url(redis_url)
    keys = Keys(CELL)
    s = await Scripts.load(redis, keys)
    await redis.flushdb()
    try:
        await register_nodes(s, redis, 0, 10, 1_000)
        small = await measure(settings, redis, keys, gets)
        await register_nodes(s, redis, 10, nodes - 10, 1_000)
        large = await measure(settings, redis, keys, gets)
    finally:
        await redis.flushdb()
        await redis.aclose()
    return {
        "nodes_small": 10,
        "nodes_large": nodes,
        "small": small,
        "large": large,
        "snapshot_build_ms_10000_nodes": large["build_ms_median"],
        "get_p99_ms": max(small["get_p99_ms"], large["get_p99_ms"]),
        "get_p99_large_over_small": round(large["get_p99_ms"] / small["get_p99_ms"], 2),
    }


def report(f: dict[str, object]) -> None:
    small, large = f["small"], f["large"]
    assert isinstance(small, dict) and isinstance(large, dict)
    print(f"stats snapshot, {f['nodes_small']} vs {f['nodes_large']} nodes:")
    print(
        f"  build_snapshot     median {small['build_ms_median']:>8} ms / "
        f"{large['build_ms_median']:>8} ms"
        f"   (max {small['build_ms_max']} / {large['build_ms_max']} ms, budget 200 ms)"
    )
    print(
        f"  GET /api/v1/stats  p99    {small['get_p99_ms']:>8} ms / {large['get_p99_ms']:>8} ms"
        f"   x{f['get_p99_large_over_small']} (budget 5 ms; {large['snapshot_bytes']} bytes)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--gets", type=int, default=2_000)
    ap.add_argument(
        "--redis-url", default=os.environ.get("LINGUA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
    )
    args = ap.parse_args()
    report(asyncio.run(run(args.redis_url, args.nodes, args.gets)))


if __name__ == "__main__":
    main()
