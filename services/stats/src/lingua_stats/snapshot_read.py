"""The snapshot's reads of nodes and pools, made for 10,000 nodes in a few round trips.

The live views (``lingua_shared.poolview``) read everything about a node (record, TTL, pool
memberships) and build the pool view with its own reads; for a snapshot that is each node
read three times. Here every node is read once (one HMGET of the fields shown), each shard
once (its members), and pools are summed from the node data already in hand. Records are
read by ``nodes_read.lua`` in batches of ``BATCH`` ids: a few dozen commands for 10,000
nodes instead of 10,000, each keeping Redis busy well under a millisecond. Definitions
are the live views': *connected* is the display view ``nodes:connected``; *schedulable* is
"the record exists, ``connected = 1`` and status ``ready``" (what selection trusts).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts
from lingua_stats.snapshot_model import LoadSummary, NodeRow, NodeSummary, PoolSummary

FIELDS = ("region", "gpu_tier", "capacity", "running", "reserved", "connected", "status")
ROW_FIELDS = ("lang_sets", "last_heartbeat_ts")  # read only for the nodes that are listed
BATCH = 500


@dataclass(frozen=True)
class NodeFacts:
    capacity: int
    running: int
    reserved: int
    schedulable: bool


def _str(v: bytes | None) -> str:
    return v.decode() if v is not None else ""


def _int(v: bytes | None) -> int:
    try:
        return int(v) if v is not None else 0
    except ValueError:
        return 0


def _lang_sets(v: bytes | None, cache: dict[bytes, list[list[str]]]) -> list[list[str]]:
    """Parsed language sets; nodes mostly share a few, so each distinct value parses once."""
    if v is None:
        return []
    if v not in cache:
        cache[v] = _parse_lang_sets(v)
    return cache[v]


def _parse_lang_sets(v: bytes) -> list[list[str]]:
    try:
        sets = json.loads(v) if v else []
    except ValueError:
        return []
    return (
        [[str(x) for x in s] for s in sets if isinstance(s, list)] if isinstance(sets, list) else []
    )


async def read_node_rows(
    redis: Redis, keys: Keys, scripts: Scripts, now_ms: int, list_max: int = 500
) -> tuple[list[NodeRow], NodeSummary, dict[str, NodeFacts]]:
    """Counts and load over every node; rows for at most ``list_max`` of them, the least
    healthy first (not schedulable, then not connected), then by id: the rows an operator
    looks for, without shipping every healthy node of a large fleet on each poll (the live
    ``/api/v1/nodes`` lists them all)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.nodes_all)
        pipe.zrange(keys.nodes_connected, 0, -1)
        all_raw, connected_raw = await pipe.execute()
    connected_view = {m.decode() for m in connected_raw}
    ids = sorted({m.decode() for m in all_raw} | connected_view)
    pending: list[tuple[bool, bool, str, bytes | None, bytes | None, NodeFacts]] = []
    facts: dict[str, NodeFacts] = {}
    by_region: Counter[str] = Counter()
    by_tier: Counter[str] = Counter()
    cap_sum = run_sum = res_sum = alive = schedulable_n = 0
    sets_cache: dict[bytes, list[list[str]]] = {}
    for i in range(0, len(ids), BATCH):
        chunk = ids[i : i + BATCH]
        records = await scripts.nodes_read(field_names=list(FIELDS), node_ids=chunk)
        for node_id, rec in zip(chunk, records, strict=True):
            region, tier, cap, run, res, conn, status = rec
            is_alive = cap is not None
            capacity, running, reserved = _int(cap), _int(run), _int(res)
            schedulable = is_alive and conn == b"1" and status == b"ready"
            if is_alive:
                alive += 1
                by_region[_str(region) or "?"] += 1
                by_tier[_str(tier) or "?"] += 1
                cap_sum, run_sum, res_sum = (
                    cap_sum + capacity,
                    run_sum + running,
                    res_sum + reserved,
                )
            schedulable_n += schedulable
            f = facts[node_id] = NodeFacts(capacity, running, reserved, schedulable)
            pending.append((schedulable, node_id in connected_view, node_id, region, tier, f))
    pending.sort(key=lambda p: (p[0], p[1], p[2]))
    listed = pending[:list_max]
    extra: list[list[bytes | None]] = []
    for i in range(0, len(listed), BATCH):
        extra += await scripts.nodes_read(
            field_names=list(ROW_FIELDS), node_ids=[p[2] for p in listed[i : i + BATCH]]
        )
    rows = [
        NodeRow.model_construct(
            node_id=node_id,
            region=_str(region),
            gpu_tier=_str(tier),
            lang_sets=_lang_sets(more[0], sets_cache),
            connected=connected,
            schedulable=f.schedulable,
            capacity=f.capacity,
            running=f.running,
            reserved=f.reserved,
            last_heartbeat_age_ms=max(0, now_ms - _int(more[1])) if more[1] else None,
        )
        for (_, connected, node_id, region, tier, f), more in zip(listed, extra, strict=True)
    ]
    summary = NodeSummary(
        registered=len(all_raw),
        alive=alive,
        connected=len(connected_view),
        schedulable=schedulable_n,
        by_region=dict(sorted(by_region.items())),
        by_gpu_tier=dict(sorted(by_tier.items())),
        load=LoadSummary(
            capacity=cap_sum,
            running=run_sum,
            reserved=res_sum,
            utilization=_load(cap_sum, run_sum, res_sum),
        ),
    )
    return rows, summary, facts


async def read_pool_summaries(
    redis: Redis, keys: Keys, facts: dict[str, NodeFacts]
) -> list[PoolSummary]:
    shard_ids = sorted(m.decode() for m in await redis.smembers(keys.pools_index))
    async with redis.pipeline(transaction=False) as pipe:
        for shard_id in shard_ids:
            pipe.zrange(keys.pool(shard_id), 0, -1)
        members = await pipe.execute()
    groups: dict[tuple[str, str, str], list[list[str]]] = defaultdict(list)
    for shard_id, raw in zip(shard_ids, members, strict=True):
        langset, region, gpu, _ = Keys.parse_shard_id(shard_id)
        groups[(langset, region, gpu)].append([m.decode() for m in raw])
    out: list[PoolSummary] = []
    for (langset, region, gpu), shards in sorted(groups.items()):
        ids = [n for shard in shards for n in shard]
        known = [facts[n] for n in ids if n in facts]
        cap = sum(f.capacity for f in known)
        run = sum(f.running for f in known)
        res = sum(f.reserved for f in known)
        out.append(
            PoolSummary(
                langset=langset.split("_"),
                region=region,
                gpu_tier=gpu,
                shards=len(shards),
                members=len(ids),
                schedulable=sum(1 for f in known if f.schedulable),
                capacity=cap,
                running=run,
                reserved=res,
                load=_load(cap, run, res),
            )
        )
    return out


def _load(capacity: int, running: int, reserved: int) -> float:
    return round(min(1.0, (running + reserved) / capacity), 4) if capacity > 0 else 0.0
