"""Stats snapshot figures (requirement S1): snapshot build time and ``GET /api/v1/stats`` latency.

Registers nodes (register + heartbeat scripts, pipelined) in a cell of its own, then times
:func:`build_snapshot` (median and max of 5) and ``GET /api/v1/stats`` through
``httpx.ASGITransport`` (p99 of ``gets`` requests) at 10 and at ``nodes`` nodes. The GET
figure should not grow with the node count: the request only copies pre-serialized bytes.
Deletes its cell afterwards (never the whole database: the server is shared), and the bus
topology the stats app declares at start-up under the run's prefix.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx
from redis.asyncio import Redis

from lingua_bench._base_common import (
    DEFAULT_AMQP_URL,
    DEFAULT_REDIS_URL,
    BenchError,
    Latency,
    delete_bus,
    delete_cell,
    emit,
    log,
    run_async,
    unique_prefix,
)
from lingua_shared.bus import Topology
from lingua_shared.keys import Keys
from lingua_shared.runtime import now_ms
from lingua_shared.scripts import Scripts, heartbeat_with_pool_assign, register_node_v2
from lingua_shared.settings import Settings
from lingua_stats.app import create_app
from lingua_stats.snapshot import build_snapshot
from lingua_stats.snapshot_model import CatalogView

SMALL = 10
LANG_SETS = ([["en", "zh"]], [["en", "ja", "zh"]], [["en", "zh"], ["de", "en", "fr"]])


async def register_nodes(s: Scripts, redis: Redis, start: int, count: int, batch: int) -> None:
    """A mixed fleet (3 regions, 2 GPU tiers, 3 language-set shapes): many pools to show."""
    now = now_ms()
    for i in range(start, start + count, batch):
        chunk = [f"bs-{j:05d}" for j in range(i, min(i + batch, start + count))]
        await s.run_all(
            register_node_v2,
            [
                {
                    "node_id": node_id,
                    "now_ms": now,
                    "ttl_ms": 600_000,
                    "region": ("eu", "us", "ap")[j % 3],
                    "gpu_tier": ("a100", "t4")[j % 2],
                    "lang_sets": LANG_SETS[j % 3],
                    "capacity": 4,
                    "services": {"asr": ["en", "zh"], "semantic": ["en", "zh"]},
                    "gateway_id": "bench",
                    "conn_id": node_id,
                }
                for j, node_id in enumerate(chunk, start=i)
            ],
        )
        await s.run_all(
            heartbeat_with_pool_assign,
            [
                {"node_id": node_id, "conn_id": node_id, "gateway_id": "bench", "now_ms": now}
                for node_id in chunk
            ],
        )


async def measure(settings: Settings, redis: Redis, keys: Keys, gets: int) -> dict[str, float]:
    scripts = await Scripts.load(redis, keys)
    builds = []
    for _ in range(5):
        snap = await build_snapshot(scripts, settings, CatalogView(), now_ms())
        builds.append(snap.build_ms)
    app = create_app(settings)
    lat = Latency()
    size = 0
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://b") as client,
    ):
        for _ in range(min(50, gets)):
            await client.get("/api/v1/stats")
        for _ in range(gets):
            t = time.perf_counter_ns()
            r = await client.get("/api/v1/stats")
            lat.record_ns(time.perf_counter_ns() - t)
            if r.status_code != 200:
                raise BenchError(f"GET /api/v1/stats answered {r.status_code}")
            size = len(r.content)
    return {
        "build_ms_median": round(statistics.median(builds), 2),
        "build_ms_max": round(max(builds), 2),
        "get_p99_ms": lat.ms(99),
        "get_p50_ms": lat.ms(50),
        "snapshot_bytes": size,
    }


async def arun(
    redis_url: str = DEFAULT_REDIS_URL,
    nodes: int = 10_000,
    gets: int = 2_000,
    amqp_url: str = DEFAULT_AMQP_URL,
) -> dict[str, Any]:
    if nodes <= SMALL or gets < 1:
        raise ValueError(f"need nodes > {SMALL} and gets >= 1 (got {nodes}, {gets})")
    cell = unique_prefix("stats")
    # a long interval: no background rebuild competes with the measured requests
    settings = Settings(
        redis_url=redis_url,
        amqp_url=amqp_url,
        cell=cell,
        bus_prefix=cell,
        stats_interval_s=3600,
        log_level="WARNING",
    )
    redis = Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    keys = Keys(cell)
    try:
        s = await Scripts.load(redis, keys)
        await register_nodes(s, redis, 0, SMALL, 1_000)
        small = await measure(settings, redis, keys, gets)
        log("stats", nodes=SMALL, **small)
        await register_nodes(s, redis, SMALL, nodes - SMALL, 1_000)
        large = await measure(settings, redis, keys, gets)
        log("stats", nodes=nodes, **large)
    finally:
        await delete_cell(redis, cell)
        await redis.aclose()
        topo = Topology(cell)
        await delete_bus(
            amqp_url,
            [e.name for e in topo.exchanges()],
            [topo.dead, topo.node_manager_queue, topo.dispatcher_queue],
        )
    return {
        "snapshot_build_ms_10000_nodes": large["build_ms_median"],
        "get_p99_ms": max(small["get_p99_ms"], large["get_p99_ms"]),
        "nodes_small": SMALL,
        "nodes_large": nodes,
        "small": small,
        "large": large,
        "get_p99_large_over_small": round(large["get_p99_ms"] / small["get_p99_ms"], 2),
    }


def run(
    redis_url: str = DEFAULT_REDIS_URL,
    nodes: int = 10_000,
    gets: int = 2_000,
    amqp_url: str = DEFAULT_AMQP_URL,
) -> dict[str, Any]:
    """``{"snapshot_build_ms_10000_nodes": float, "get_p99_ms": float, ...}`` (build time is
    for ``nodes`` nodes; the key keeps its name so a report reads the same at any size)."""
    return run_async(arun(redis_url, nodes, gets, amqp_url))


def report(f: dict[str, Any]) -> None:
    small, large = f["small"], f["large"]
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--gets", type=int, default=2_000)
    ap.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    args = ap.parse_args()
    emit(run(args.redis_url, args.nodes, args.gets, args.amqp_url))


if __name__ == "__main__":
    main()
