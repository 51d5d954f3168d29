"""The live PoolView and node list, read straight from Redis at each call (requirement N8, S3).

Nothing here is cached: every call reads the key schema of :mod:`lingua_shared.keys` as it
is now, so what an operator sees is what selection would see. Reads are batched in pipelines
(one round trip per :data:`BATCH` keys) and never use ``KEYS``/``SCAN``: the shard list comes
from ``pools:index`` and the node list from ``nodes:all`` + ``nodes:connected``.

Both meanings of "online" (N5) are shown side by side:

* ``connected`` is the display view (``nodes:connected``): a gateway holds the WebSocket.
* ``schedulable`` is what selection trusts: the node key exists (TTL alive), its record says
  ``connected == "1"`` and ``status == "ready"``. A pool member is schedulable when its node is
  and its load score is below :data:`UNSCHEDULABLE` (``lua/lib/common.lua``).

A corrupt entry never fails a view: a ``pools:index`` entry that is not a shard id
(:meth:`Keys.parse_shard_id`) or whose pool is not a sorted set is skipped and counted
(``invalid_records``); a node key of another type reads as no record; language sets that
are not a JSON list of code lists read as none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from lingua_shared.keys import InvalidShardId, Keys
from lingua_shared.protocol.langs import is_lang

BATCH = 500
UNSCHEDULABLE = 1000.0  # load_score() in lua/lib/common.lua adds this to unschedulable nodes

_POOL_FIELDS = ("capacity", "running", "reserved", "connected", "status")


class PoolMember(BaseModel):
    node_id: str
    score: float
    schedulable: bool


class PoolShard(BaseModel):
    shard_id: str
    shard: int
    members: list[PoolMember]
    capacity: int = Field(description="sum of the members' capacities")
    reserved: int
    running: int
    free: int = Field(description="free slots on schedulable members")


class PoolGroup(BaseModel):
    langset: list[str]
    region: str
    gpu_tier: str
    shards: list[PoolShard]


class NodeCounts(BaseModel):
    registered: int = Field(description="ids in nodes:all")
    alive: int = Field(description="node key exists (TTL alive)")
    connected: int = Field(description="display view: a gateway holds the connection")
    schedulable: int = Field(description="alive, connected in its record, status ready")
    in_pools: int = Field(description="distinct node ids found in pool shards")


class PoolView(BaseModel):
    generated_at_ms: int
    groups: list[PoolGroup]
    nodes: NodeCounts
    invalid_records: int = Field(
        0,
        description="pools:index entries skipped: not a shard id, or a pool key that is not a "
        "sorted set",
    )


class NodeView(BaseModel):
    node_id: str
    alive: bool = Field(description="the node key exists (TTL alive)")
    region: str | None = None
    gpu_tier: str | None = None
    lang_sets: list[list[str]] = Field(default_factory=list)
    capacity: int = 0
    running: int = 0
    reserved: int = 0
    status: str | None = None
    connected: bool = Field(description="display: a gateway holds the node's connection")
    schedulable: bool = Field(description="key exists, connected and ready: selection's view")
    gateway_id: str | None = None
    last_heartbeat_age_ms: int | None = None
    ttl_remaining_ms: int | None = Field(
        None,
        description="time left to the node's logical expiry (nodes:expiry), 0 once it passed "
        "(the sweeper removes it; its record outlives the expiry by a grace)",
    )
    pools: list[str] = Field(default_factory=list)


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _int(v: Any, default: int = 0) -> int:
    if v is None:
        return default
    try:
        return int(float(_s(v)))
    except (ValueError, OverflowError):  # 'abc', 'nan', 'inf'
        return default


def wrong_type(reply: Any) -> bool:
    """A pipelined reply (``raise_on_error=False``) that read a key holding another type; any
    other error reply is raised."""
    if isinstance(reply, ResponseError):
        if str(reply).startswith("WRONGTYPE"):
            return True
        raise reply
    return False


def lang_sets_of(raw: Any) -> list[list[str]]:
    """A record's ``lang_sets``, or [] when it is not a JSON list of language code lists."""
    try:
        sets = json.loads(raw) if raw else []
    except ValueError:  # not JSON, or bytes that are not UTF-8
        return []
    ok = isinstance(sets, list) and all(
        isinstance(s, list) and all(is_lang(x) for x in s) for s in sets
    )
    return sets if ok else []


def _chunks(items: Sequence[Any], size: int = BATCH) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _schedulable(record: dict[str, Any] | None) -> bool:
    return record is not None and record.get("connected") == "1" and record.get("status") == "ready"


async def _pool_records(redis: Redis, keys: Keys, ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """The fields pool accounting needs, for each id whose node key exists."""
    out: dict[str, dict[str, str]] = {}
    for chunk in _chunks(ids):
        async with redis.pipeline(transaction=False) as pipe:
            for node_id in chunk:
                pipe.hmget(keys.node(node_id), *_POOL_FIELDS)
            replies = await pipe.execute(raise_on_error=False)
        for node_id, values in zip(chunk, replies, strict=True):
            if not wrong_type(values) and any(v is not None for v in values):
                out[node_id] = {
                    f: _s(v) for f, v in zip(_POOL_FIELDS, values, strict=True) if v is not None
                }
    return out


async def read_pool_view(redis: Redis, keys: Keys, now_ms: int) -> PoolView:
    """Every pool group, shard and member as Redis holds them now (never cached, N8)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.pools_index)
        pipe.smembers(keys.nodes_all)
        pipe.zrange(keys.nodes_connected, 0, -1)
        index, all_raw, connected_raw = await pipe.execute()
    parsed: dict[str, tuple[str, str, str, int]] = {}
    skipped = 0
    for entry in sorted(_s(x) for x in index):
        try:
            parsed[entry] = Keys.parse_shard_id(entry)
        except InvalidShardId:
            skipped += 1
    registered = {_s(x) for x in all_raw}
    connected = {_s(x) for x in connected_raw}

    members_of: dict[str, list[tuple[str, float]]] = {}
    for chunk in _chunks(list(parsed)):
        async with redis.pipeline(transaction=False) as pipe:
            for shard_id in chunk:
                pipe.zrange(keys.pool(shard_id), 0, -1, withscores=True)
            replies = await pipe.execute(raise_on_error=False)
        for shard_id, reply in zip(chunk, replies, strict=True):
            if wrong_type(reply):
                skipped += 1
                del parsed[shard_id]
                continue
            members_of[shard_id] = [(_s(m), float(score)) for m, score in reply]

    in_pools = {m for members in members_of.values() for m, _ in members}
    records = await _pool_records(redis, keys, sorted(registered | connected | in_pools))

    groups: dict[tuple[str, str, str], list[PoolShard]] = {}
    for shard_id, (langset, region, gpu, shard) in parsed.items():
        members: list[PoolMember] = []
        capacity = running = reserved = free = 0
        for node_id, score in members_of[shard_id]:
            rec = records.get(node_id)
            ok = _schedulable(rec) and score < UNSCHEDULABLE
            members.append(PoolMember(node_id=node_id, score=score, schedulable=ok))
            if rec is None:
                continue
            cap, run, res = (_int(rec.get(f)) for f in ("capacity", "running", "reserved"))
            capacity, running, reserved = capacity + cap, running + run, reserved + res
            if ok:
                free += max(0, cap - run - res)
        groups.setdefault((langset, region, gpu), []).append(
            PoolShard(
                shard_id=shard_id,
                shard=shard,
                members=members,
                capacity=capacity,
                reserved=reserved,
                running=running,
                free=free,
            )
        )

    return PoolView(
        generated_at_ms=now_ms,
        groups=[
            PoolGroup(
                langset=langset.split("_"),
                region=region,
                gpu_tier=gpu,
                shards=sorted(shards, key=lambda s: s.shard),
            )
            for (langset, region, gpu), shards in sorted(groups.items())
        ],
        nodes=NodeCounts(
            registered=len(registered),
            alive=len(records),
            connected=len(connected),
            schedulable=sum(1 for r in records.values() if _schedulable(r)),
            in_pools=len(in_pools),
        ),
        invalid_records=skipped,
    )


def _left(expiry: Any, now_ms: int) -> int | None:
    if expiry is None or isinstance(expiry, Exception):
        return None
    return max(0, int(expiry) - now_ms)


async def read_nodes(redis: Redis, keys: Keys, now_ms: int) -> list[NodeView]:
    """Every node known to ``nodes:all`` or ``nodes:connected``, sorted by id (never cached)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.nodes_all)
        pipe.zrange(keys.nodes_connected, 0, -1)
        all_raw, connected_raw = await pipe.execute()
    connected = {_s(x) for x in connected_raw}
    ids = sorted({_s(x) for x in all_raw} | connected)

    out: list[NodeView] = []
    for chunk in _chunks(ids):
        async with redis.pipeline(transaction=False) as pipe:
            for node_id in chunk:
                pipe.hgetall(keys.node(node_id))
                pipe.zscore(keys.nodes_expiry, node_id)
                pipe.smembers(keys.node_pools(node_id))
            replies = await pipe.execute(raise_on_error=False)
        for i, node_id in enumerate(chunk):
            raw, expiry, pools = replies[3 * i : 3 * i + 3]
            raw = {} if wrong_type(raw) else raw  # a key of another type: no record
            pools = set() if wrong_type(pools) else pools
            rec = {_s(k): _s(v) for k, v in raw.items()}
            alive = bool(rec)
            last_hb = rec.get("last_heartbeat_ts")
            out.append(
                NodeView(
                    node_id=node_id,
                    alive=alive,
                    region=rec.get("region"),
                    gpu_tier=rec.get("gpu_tier"),
                    lang_sets=lang_sets_of(rec.get("lang_sets")),
                    capacity=_int(rec.get("capacity")),
                    running=_int(rec.get("running")),
                    reserved=_int(rec.get("reserved")),
                    status=rec.get("status"),
                    connected=node_id in connected,
                    schedulable=_schedulable(rec if alive else None),
                    gateway_id=rec.get("gateway_id") or None,
                    last_heartbeat_age_ms=(now_ms - _int(last_hb)) if last_hb else None,
                    ttl_remaining_ms=_left(expiry, now_ms) if alive else None,
                    pools=sorted(_s(p) for p in pools),
                )
            )
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _age(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}s"


def _yes(v: bool) -> str:
    return "yes" if v else "no"


def render_text(view: PoolView, nodes: Sequence[NodeView]) -> str:
    """A compact human table of nodes and pools (the demo and ``lingua_stats show``)."""
    c = view.nodes
    lines = [
        f"nodes: registered={c.registered} alive={c.alive} connected={c.connected} "
        f"schedulable={c.schedulable} in_pools={c.in_pools}"
    ]
    if nodes:
        rows = [
            [
                n.node_id,
                n.region or "-",
                n.gpu_tier or "-",
                " ".join("_".join(s) for s in n.lang_sets) or "-",
                f"{n.running}+{n.reserved}/{n.capacity}",
                _yes(n.connected),
                _yes(n.schedulable),
                _age(n.last_heartbeat_age_ms),
                _age(n.ttl_remaining_ms),
                n.gateway_id or "-",
                str(len(n.pools)),
            ]
            for n in nodes
        ]
        header = [
            "NODE",
            "REGION",
            "GPU",
            "LANG_SETS",
            "RUN+RES/CAP",
            "CONN",
            "SCHED",
            "HB_AGE",
            "TTL",
            "GATEWAY",
            "POOLS",
        ]
        lines += ["  " + line for line in _table(header, rows)]
    shards = [(g, s) for g in view.groups for s in g.shards]
    lines.append(f"pools: groups={len(view.groups)} shards={len(shards)}")
    if shards:
        rows = [
            [
                s.shard_id,
                str(len(s.members)),
                f"{s.running}+{s.reserved}/{s.capacity}",
                str(s.free),
                " ".join(
                    f"{m.node_id}({m.score:.2f}{'' if m.schedulable else ' x'})" for m in s.members
                ),
            ]
            for _, s in shards
        ]
        header = ["SHARD", "N", "RUN+RES/CAP", "FREE", "MEMBERS (score, x = unschedulable)"]
        lines += ["  " + line for line in _table(header, rows)]
    return "\n".join(lines)
