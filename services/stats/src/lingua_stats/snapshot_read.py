"""The snapshot's reads of nodes and pools, made for 10,000 nodes in a few round trips.

The live views (``lingua_shared.poolview``) read everything about a node (record, TTL, pool
memberships); for a snapshot of a large fleet that is far too much to ship and parse every
few seconds. Here the sums are made inside Redis: ``nodes_summary.lua`` totals a batch of
``NODE_BATCH`` node records (counts by region and tier, capacity, running, reserved) and
names the batch's unschedulable nodes; ``pools_summary.lua`` totals ``SHARD_BATCH`` pool
shards (members, schedulable, load). Each call keeps Redis busy about a millisecond; the
calls of one build go out pipelined in one round trip. Only the listed rows (at most
``stats_node_list_max``) are read field by field, with ``nodes_read.lua``.

Definitions are the live views': *connected* is the display view ``nodes:connected``;
*schedulable* is "the record exists, ``connected = 1`` and status ``ready``" (what selection
trusts).

:func:`read_cell` is one cell's part of a snapshot build: these two reads, then one pipelined
round trip for its counters, recent errors, active sessions and fallbacks.

A corrupt entry never fails a read: an index entry that is not an id (``Keys.parse_shard_id``,
the scripts' ``is_shard_id`` / ``is_node_id``), a key of another type or a record with a
malformed field is skipped by the scripts and returned here by name, for the snapshot to
count (``invalid_records``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from lingua_shared.keys import InvalidShardId, Keys
from lingua_shared.poolview import lang_sets_of, wrong_type
from lingua_shared.scripts import NodesSummary, Scripts, ShardSummary, nodes_summary, pools_summary
from lingua_shared.settings import Settings
from lingua_stats.snapshot_model import (
    LoadSummary,
    NodeRow,
    NodeSummary,
    PoolSummary,
    RecentError,
)

ROW_FIELDS = (
    "region",
    "gpu_tier",
    "capacity",
    "running",
    "reserved",
    "connected",
    "status",
    "lang_sets",
    "last_heartbeat_ts",
)
NODE_BATCH = 500  # node records per nodes_summary / nodes_read call
SHARD_BATCH = 4  # pool shards (at most 256 members each) per pools_summary call
RECENT_ERRORS = 50  # the latest typed errors a snapshot shows


def _str(v: bytes | None) -> str:
    return v.decode(errors="replace") if v is not None else ""


def _int(v: bytes | None) -> int:
    try:
        return int(v) if v is not None else 0
    except ValueError:
        return 0


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _least_healthy(
    ids: list[str], unschedulable: set[str], connected: set[str], limit: int
) -> list[str]:
    """The ``limit`` ids an operator looks at first: not schedulable, then not connected,
    each by id (``ids`` is sorted), then healthy nodes by id."""
    ordered = [n for n in ids if n in unschedulable and n not in connected]
    ordered += [n for n in ids if n in unschedulable and n in connected]
    ordered += [n for n in ids if n not in unschedulable and n not in connected]
    if len(ordered) < limit:
        ordered += [n for n in ids if n not in unschedulable and n in connected][
            : limit - len(ordered)
        ]
    return ordered[:limit]


async def read_node_rows(
    redis: Redis, keys: Keys, scripts: Scripts, now_ms: int, list_max: int = 500
) -> tuple[list[NodeRow], NodeSummary, list[str]]:
    """Counts and load over every node; rows for at most ``list_max`` of them, the least
    healthy first: the rows an operator looks for, without shipping every healthy node of a
    large fleet on each poll (the live ``/api/v1/nodes`` lists them all). Also the ids
    skipped as malformed (in no count; listed first)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.nodes_all)
        pipe.zrange(keys.nodes_connected, 0, -1)
        all_raw, connected_raw = await pipe.execute()
    connected_view = {_str(m) for m in connected_raw}
    ids = sorted({_str(m) for m in all_raw} | connected_view)
    # one round trip of nodes_summary calls (each its own EVALSHA: other clients run between)
    batches: list[NodesSummary] = await scripts.run_all(
        nodes_summary, [{"node_ids": c} for c in _chunks(ids, NODE_BATCH)], return_exceptions=False
    )
    by_region: Counter[str] = Counter()
    by_tier: Counter[str] = Counter()
    unschedulable: set[str] = set()
    invalid: list[str] = []
    for b in batches:
        by_region.update(b.by_region)
        by_tier.update(b.by_gpu_tier)
        unschedulable.update(b.unschedulable)
        invalid += b.invalid
    cap_sum = sum(b.capacity for b in batches)
    run_sum = sum(b.running for b in batches)
    res_sum = sum(b.reserved for b in batches)

    listed = _least_healthy(ids, unschedulable | set(invalid), connected_view, list_max)
    records: list[list[bytes | None]] = []
    for chunk in _chunks(listed, NODE_BATCH):
        records += await scripts.nodes_read(field_names=list(ROW_FIELDS), node_ids=chunk)
    rows = []
    bad = set(invalid)
    for node_id, rec in zip(listed, records, strict=True):
        region, tier, cap, run, res, conn, status, lang_sets, last_hb = rec
        ok = node_id not in bad
        rows.append(
            NodeRow.model_construct(
                node_id=node_id,
                cell=keys.cell,
                region=_str(region),
                gpu_tier=_str(tier),
                lang_sets=lang_sets_of(lang_sets),
                connected=node_id in connected_view,
                schedulable=ok and cap is not None and conn == b"1" and status == b"ready",
                invalid=not ok,
                capacity=_int(cap),
                running=_int(run),
                reserved=_int(res),
                last_heartbeat_age_ms=max(0, now_ms - _int(last_hb)) if last_hb else None,
            )
        )
    summary = NodeSummary(
        registered=len(all_raw),
        alive=sum(b.alive for b in batches),
        connected=len(connected_view),
        schedulable=sum(b.schedulable for b in batches),
        by_region=dict(sorted(by_region.items())),
        by_gpu_tier=dict(sorted(by_tier.items())),
        load=LoadSummary(
            capacity=cap_sum,
            running=run_sum,
            reserved=res_sum,
            utilization=load_ratio(cap_sum, run_sum, res_sum),
        ),
    )
    return rows, summary, invalid


async def read_pool_summaries(
    redis: Redis, keys: Keys, scripts: Scripts
) -> tuple[list[PoolSummary], list[str]]:
    """One summary per pool group, and the ``pools:index`` entries skipped (not a shard id,
    or a pool key the script could not read as a sorted set)."""
    groups_of: dict[str, tuple[str, str, str]] = {}
    skipped: list[str] = []
    for entry in sorted(_str(m) for m in await redis.smembers(keys.pools_index)):
        try:
            langset, region, gpu, _ = Keys.parse_shard_id(entry)
        except InvalidShardId:
            skipped.append(entry)  # never sent: the script would skip it too
            continue
        groups_of[entry] = (langset, region, gpu)
    shard_ids = list(groups_of)
    batches: list[list[ShardSummary]] = await scripts.run_all(
        pools_summary,
        [{"shard_ids": c} for c in _chunks(shard_ids, SHARD_BATCH)],
        return_exceptions=False,
    )
    shards = [s for batch in batches for s in batch]
    groups: dict[tuple[str, str, str], list[ShardSummary]] = defaultdict(list)
    for shard_id, shard in zip(shard_ids, shards, strict=True):
        if shard.skipped:
            skipped.append(shard_id)
        else:
            groups[groups_of[shard_id]].append(shard)
    out: list[PoolSummary] = []
    for (langset, region, gpu), group in sorted(groups.items()):
        cap = sum(s.capacity for s in group)
        run = sum(s.running for s in group)
        res = sum(s.reserved for s in group)
        out.append(
            PoolSummary(
                langset=langset.split("_"),
                region=region,
                gpu_tier=gpu,
                cell=keys.cell,
                shards=len(group),
                members=sum(s.members for s in group),
                schedulable=sum(s.schedulable for s in group),
                capacity=cap,
                running=run,
                reserved=res,
                load=load_ratio(cap, run, res),
            )
        )
    return out, skipped


def load_ratio(capacity: int, running: int, reserved: int) -> float:
    """(running + reserved) / capacity, 0..1, rounded; 0 without capacity."""
    return round(min(1.0, (running + reserved) / capacity), 4) if capacity > 0 else 0.0


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def counts(raw: Any, key: str, bad: list[str]) -> dict[str, int]:
    """A counter hash; a field that is not an integer, or a key of another type, is skipped
    and named in ``bad``."""
    if wrong_type(raw):
        bad.append(key)
        return {}
    out: dict[str, int] = {}
    for k, v in raw.items():
        try:
            out[_s(k)] = int(v)
        except ValueError:
            bad.append(f"{key}/{_s(k)}")
    return out


def recent_errors(raw: Iterable[Any], cell: str) -> list[RecentError]:
    out: list[RecentError] = []
    for item in raw:
        try:
            error = RecentError.model_validate(json.loads(item))
        except ValueError:
            continue  # a malformed entry is display data: skip it, keep the rest
        error.cell = cell
        out.append(error)
    return out


@dataclass
class CellRead:
    """One cell's part of a snapshot build: what its keys hold, read as the snapshot reads it."""

    cell: str
    rows: list[NodeRow]
    nodes: NodeSummary
    bad_nodes: list[str]  # node ids skipped as malformed
    pools: list[PoolSummary]
    bad_shards: list[str]  # pools:index entries skipped
    seconds: list[dict[str, int]]  # the window's stats:sec:<s> counters, oldest first
    exclusions: dict[str, int]
    unserved: dict[str, int]
    recent: list[RecentError]  # newest pushed first
    sessions: int
    fallbacks: dict[str, int]  # stats:fallbacks: cell -> sessions of this cell placed there
    bad_counters: list[str]  # <key>/<field> of counters that are not integers, or <key>


async def read_cell(
    scripts: Scripts, settings: Settings, now_ms: int, seconds: Sequence[int]
) -> CellRead:
    """Everything a snapshot shows of the cell of ``scripts.keys``: nodes and pools (summed
    inside Redis, above), then one pipelined round trip: the per-second job counters of
    ``seconds``, the selection counters, the recent errors, the active sessions (older ones
    trimmed) and the fallbacks counted by the gateways."""
    redis, keys = scripts.redis, scripts.keys
    rows, nodes, bad_nodes = await read_node_rows(
        redis, keys, scripts, now_ms, settings.stats_node_list_max
    )
    pools, bad_shards = await read_pool_summaries(redis, keys, scripts)
    active_after = now_ms - int(settings.session_ttl_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for s in seconds:
            pipe.hgetall(keys.stats_second(s))
        pipe.hgetall(keys.exclusions)
        pipe.hgetall(keys.unserved)
        pipe.lrange(keys.recent_errors, 0, RECENT_ERRORS - 1)
        pipe.zremrangebyscore(keys.sessions_active, "-inf", active_after)
        pipe.zcount(keys.sessions_active, f"({active_after}", "+inf")
        pipe.hgetall(keys.fallbacks)
        replies = await pipe.execute(raise_on_error=False)
    bad: list[str] = []
    per_second = [
        counts(r, keys.stats_second(s), bad) for s, r in zip(seconds, replies, strict=False)
    ]
    exclusions, unserved, recent, _, sessions, fallbacks = replies[len(seconds) :]
    exclusions = counts(exclusions, keys.exclusions, bad)
    unserved = counts(unserved, keys.unserved, bad)
    if wrong_type(recent):
        recent, bad = [], [*bad, keys.recent_errors]
    if wrong_type(sessions):
        sessions, bad = 0, [*bad, keys.sessions_active]
    fallbacks = counts(fallbacks, keys.fallbacks, bad)
    return CellRead(
        cell=keys.cell,
        rows=rows,
        nodes=nodes,
        bad_nodes=bad_nodes,
        pools=pools,
        bad_shards=bad_shards,
        seconds=per_second,
        exclusions=exclusions,
        unserved=unserved,
        recent=recent_errors(recent, keys.cell),
        sessions=int(sessions),
        fallbacks=fallbacks,
        bad_counters=bad,
    )
