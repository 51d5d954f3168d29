"""``make bench``: figures, never assertions. Each run prints its figures and the ratio to a
baseline measured in the same invocation (this machine is shared and noisy).

Now: the node lifecycle scripts on the real Redis — register, then heartbeats applied one
call per round trip (baseline) vs pipelined in batches the way node-manager applies a
coalesced gateway batch. The full suite is ``python -m lingua_bench`` (``make bench``), which
writes ``bench/results/latest.json``; these figures go to ``bench/results/scripts.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts, heartbeat_with_pool_assign

ROOT = Path(__file__).resolve().parent.parent


async def run(nodes: int, rounds: int, batch: int, redis_url: str) -> dict[str, float]:
    redis = Redis.from_url(redis_url)
    keys = Keys("bench")
    s = await Scripts.load(redis, keys)
    await redis.flushdb()
    now = int(time.time() * 1000)
    ids = [f"bench-{i:05d}" for i in range(nodes)]
    t0 = time.perf_counter()
    for i, node_id in enumerate(ids):
        await s.register_node_v2(
            node_id=node_id,
            now_ms=now,
            ttl_ms=60_000,
            region=("eu", "us")[i % 2],
            gpu_tier=("a100", "t4")[i % 3 % 2],
            lang_sets=[["en", "zh"], ["en", "ja", "zh"]],
            capacity=4,
            services={"asr": ["en", "ja", "zh"]},
            gateway_id="bench",
            conn_id=node_id,
        )
    register_s = time.perf_counter() - t0

    async def one_by_one() -> float:
        t = time.perf_counter()
        for node_id in ids:
            await s.heartbeat_with_pool_assign(
                node_id=node_id,
                conn_id=node_id,
                gateway_id="bench",
                now_ms=now,
                running_jobs=0,
                cpu_percent=10.0,
            )
        return time.perf_counter() - t

    async def pipelined() -> float:
        t = time.perf_counter()
        for i in range(0, nodes, batch):
            await s.run_all(
                heartbeat_with_pool_assign,
                [
                    {
                        "node_id": node_id,
                        "conn_id": node_id,
                        "gateway_id": "bench",
                        "now_ms": now,
                        "running_jobs": 0,
                        "cpu_percent": 10.0,
                    }
                    for node_id in ids[i : i + batch]
                ],
            )
        return time.perf_counter() - t

    await one_by_one()  # first heartbeats assign pools; measure steady state after
    single = [await one_by_one() for _ in range(rounds)]
    piped = [await pipelined() for _ in range(rounds)]
    await redis.flushdb()
    await redis.aclose()
    single_rate = nodes / statistics.median(single)
    piped_rate = nodes / statistics.median(piped)
    return {
        "nodes": nodes,
        "register_per_s": round(nodes / register_s),
        "heartbeat_single_per_s": round(single_rate),
        "heartbeat_pipelined_per_s": round(piped_rate),
        "pipelined_over_single": round(piped_rate / single_rate, 2),
        "batch": batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument(
        "--redis-url", default=os.environ.get("LINGUA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
    )
    args = ap.parse_args()
    figures = asyncio.run(run(args.nodes, args.rounds, args.batch, args.redis_url))
    import bench_stats  # scripts/ is on sys.path when this file runs as a script

    stats = asyncio.run(bench_stats.run(args.redis_url, args.nodes))
    out = {
        "machine": {"cpus": os.cpu_count()},
        "node_scripts": figures,
        "stats": stats,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = ROOT / "bench" / "results" / "scripts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"node lifecycle scripts, {figures['nodes']} nodes (Redis {args.redis_url}):")
    print(f"  register                 {figures['register_per_s']:>8} /s")
    print(f"  heartbeat, one per RTT   {figures['heartbeat_single_per_s']:>8} /s   (baseline)")
    print(
        f"  heartbeat, pipelined     {figures['heartbeat_pipelined_per_s']:>8} /s   "
        f"x{figures['pipelined_over_single']} the baseline (batches of {figures['batch']})"
    )
    bench_stats.report(stats)
    print(f"  written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
