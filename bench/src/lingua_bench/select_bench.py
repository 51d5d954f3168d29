"""``select_node.lua`` as the pool grows: the time one call runs inside Redis.

The whole cell is one Redis Cluster slot, so the time a script runs blocks every other script
of the cell; a client round trip would add a fixed network and client cost that hides it. So
the figure is Redis-side (``method``): the slow log's duration of each ``EVALSHA``, logging
every command while measuring (``slowlog-log-slower-than 0``, restored afterwards), found by
the script's SHA and this connection's name (:func:`lingua_bench.select_redis.logged_us`).

Pools of one pair (zh -> en) of 1, 40 and 400 shards of 256 nodes (256, 10,240 and 102,400
nodes), every node running one job of its four slots (no node idle: the case where selection
used to read every shard), built directly with the scripts in pipelines
(:class:`lingua_bench.select_redis.Cell`), growing from one size to the next. For each size
and each policy (``pack``, ``spread``), ``samples`` calls select for a fresh job and give the
slot back afterwards (untimed), so every call sees the same pools.

``shards_<N>`` holds p50/p99 per policy and, as its headline ``p50_us``/``p99_us``, the
larger of the two policies' (the worse case).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from redis import Redis

from lingua_bench._base_common import DEFAULT_REDIS_URL, emit, log, unique_prefix
from lingua_bench.select_redis import CLIENT_NAME, POLICIES, SHARD, Cell, measure
from lingua_shared.scripts import find_lua_dir

SHARDS = (1, 40, 400)
QUICK_SHARDS = (1, 2)
METHOD = "redis_slowlog"  # Redis-side duration of each EVALSHA (slow log), not a round trip


def percentile(values: list[int], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)])


def run(
    redis_url: str = DEFAULT_REDIS_URL,
    samples: int = 1_000,
    shards: tuple[int, ...] = SHARDS,
    policies: tuple[str, ...] = POLICIES,
) -> dict[str, Any]:
    """``{"method": str, "shards_<N>": {"p50_us", "p99_us", "pack": {...}, "spread": {...},
    "nodes", "samples"}, ...}``."""
    if not shards or list(shards) != sorted(set(shards)) or shards[0] < 1 or samples < 1:
        raise ValueError(f"shard counts must be positive and ascending, samples >= 1: {shards}")
    if not policies or any(p not in POLICIES for p in policies):
        raise ValueError(f"policies among {POLICIES}: {policies}")
    r = Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    r.client_setname(CLIENT_NAME)
    cell = Cell(r, find_lua_dir(), unique_prefix("sel"))
    old = r.config_get("slowlog-*")
    out: dict[str, Any] = {"method": METHOD}
    try:
        built = 0
        for n in shards:
            nodes = n * SHARD
            now = int(time.time() * 1000)
            t = time.monotonic()
            cell.build(nodes, now, start=built)
            built = nodes
            got = r.scard(cell.k.pair("zh", "en"))
            if got != n:
                raise RuntimeError(f"{nodes} nodes made {got} shards, not {n}")
            log("select pools built", nodes=nodes, shards=n, seconds=round(time.monotonic() - t, 1))
            r.config_set("slowlog-max-len", 16384)
            r.config_set("slowlog-log-slower-than", 0)
            try:
                figures: dict[str, Any] = {}
                for policy in policies:
                    us = measure(cell, cell.sha["select_node"], policy, samples, now, f"s{n}")
                    figures[policy] = {
                        "p50_us": percentile(us, 50),
                        "p99_us": percentile(us, 99),
                        "max_us": float(max(us)),
                    }
            finally:
                for key, value in old.items():
                    r.config_set(key, value)
            out[f"shards_{n}"] = {
                "p50_us": max(f["p50_us"] for f in figures.values()),
                "p99_us": max(f["p99_us"] for f in figures.values()),
                **figures,
                "nodes": nodes,
                "samples": samples,
            }
            log("select", shards=n, **{p: figures[p]["p99_us"] for p in policies})
    finally:
        for key, value in old.items():
            r.config_set(key, value)
        cell.wipe()
        r.close()
    first, last = f"shards_{shards[0]}", f"shards_{shards[-1]}"
    out["p99_largest_over_smallest"] = round(out[last]["p99_us"] / max(out[first]["p99_us"], 1), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    ap.add_argument("--samples", type=int, default=1_000)
    ap.add_argument("--shards", default=",".join(map(str, SHARDS)), help="ascending, commas")
    args = ap.parse_args()
    emit(run(args.redis_url, args.samples, tuple(int(s) for s in args.shards.split(","))))


if __name__ == "__main__":
    main()
