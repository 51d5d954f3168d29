"""``nodes_summary.lua`` and ``pools_summary.lua`` against real Redis: their totals agree with
the live views of :mod:`lingua_shared.poolview` (which read every record from Python) on a
fleet in every state a node can be in, and bad input is rejected."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lingua_shared.errors import ScriptRejected
from lingua_shared.poolview import read_nodes, read_pool_view

NOW = 1_700_000_000_000
LANG_SETS = ([["en", "zh"]], [["en", "ja", "zh"]], [["de", "en"], ["en", "zh"]])


async def build_fleet(scripts, redis, keys, n: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    """``n`` nodes in small shards (5), then: some dropped, some gone gracefully, some with
    their record deleted behind the scheduler's back (expired, not yet swept), some busy."""
    rnd = random.Random(seed)
    for i in range(n):
        node_id = f"n{i:03d}"
        await scripts.register_node_v2(
            node_id=node_id,
            now_ms=NOW,
            ttl_ms=60_000,
            region=rnd.choice(("eu", "us", "ap")),
            gpu_tier=rnd.choice(("a100", "t4")),
            lang_sets=rnd.choice(LANG_SETS),
            capacity=rnd.randint(1, 6),
            services={"asr": ["de", "en", "ja", "zh"], "semantic": ["de", "en", "ja", "zh"]},
            gateway_id="gw-1",
            conn_id=f"c-{node_id}",
        )
        await scripts.heartbeat_with_pool_assign(
            node_id=node_id, conn_id=f"c-{node_id}", gateway_id="gw-1", now_ms=NOW, max_shard_size=5
        )
    for i in range(n):
        node_id, roll = f"n{i:03d}", rnd.random()
        if roll < 0.15:
            await scripts.node_offline(
                node_id=node_id, mode="dropped", conn_id=f"c-{node_id}", now_ms=NOW
            )
        elif roll < 0.25:
            await scripts.node_offline(
                node_id=node_id, mode="graceful", conn_id=f"c-{node_id}", now_ms=NOW
            )
        elif roll < 0.32:
            await redis.delete(keys.node(node_id))
        elif roll < 0.6:
            await redis.hset(
                keys.node(node_id), mapping={"running": rnd.randint(0, 2), "reserved": 1}
            )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_nodes_summary_agrees_with_the_live_node_view(scripts, redis, keys, seed):
    await build_fleet(scripts, redis, keys, 60, seed)
    live = await read_nodes(redis, keys, NOW)
    ids = [v.node_id for v in live]
    # batches of 7 ids: the totals must not depend on where a batch boundary falls
    parts = [await scripts.nodes_summary(node_ids=ids[i : i + 7]) for i in range(0, len(ids), 7)]

    alive = [v for v in live if v.alive]
    assert sum(p.alive for p in parts) == len(alive)
    assert sum(p.schedulable for p in parts) == sum(v.schedulable for v in live)
    assert sum(p.capacity for p in parts) == sum(v.capacity for v in alive)
    assert sum(p.running for p in parts) == sum(v.running for v in alive)
    assert sum(p.reserved for p in parts) == sum(v.reserved for v in alive)
    regions: Counter[str] = Counter()
    tiers: Counter[str] = Counter()
    for p in parts:
        regions.update(p.by_region)
        tiers.update(p.by_gpu_tier)
    assert regions == Counter(v.region for v in alive)
    assert tiers == Counter(v.gpu_tier for v in alive)
    assert [n for p in parts for n in p.unschedulable] == [
        v.node_id for v in live if not v.schedulable
    ]
    assert any(v.schedulable for v in live) and any(not v.schedulable for v in live)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_pools_summary_agrees_with_the_live_pool_view(scripts, redis, keys, seed):
    await build_fleet(scripts, redis, keys, 60, seed)
    view = await read_pool_view(redis, keys, NOW)
    shards = [s for g in view.groups for s in g.shards]
    assert len(shards) > 4, "the fleet spans several shards"
    ids = [s.shard_id for s in shards]
    got = [
        r
        for i in range(0, len(ids), 3)
        for r in await scripts.pools_summary(shard_ids=ids[i : i + 3])
    ]
    assert [(r.members, r.schedulable, r.capacity, r.running, r.reserved) for r in got] == [
        (len(s.members), sum(m.schedulable for m in s.members), s.capacity, s.running, s.reserved)
        for s in shards
    ]


async def test_a_missing_shard_and_an_empty_batch(scripts):
    (empty,) = await scripts.pools_summary(shard_ids=["en_zh:eu:a100:9"])
    assert (empty.members, empty.schedulable, empty.capacity) == (0, 0, 0)
    assert await scripts.pools_summary(shard_ids=[]) == []
    nothing = await scripts.nodes_summary(node_ids=[])
    assert (nothing.alive, nothing.by_region, nothing.unschedulable) == (0, {}, [])


@pytest.mark.parametrize(
    ("script", "kw", "field"),
    [
        ("nodes_summary", {"node_ids": ["x"] * 1001}, "node_ids"),
        ("nodes_summary", {"node_ids": [7]}, "node_ids"),
        ("nodes_summary", {"node_ids": ["ok", ["nested"]]}, "node_ids"),
        ("pools_summary", {"shard_ids": [None]}, "shard_ids"),
        ("pools_summary", {"shard_ids": ["en_zh:eu:a100:0"] * 65}, "shard_ids"),
    ],
)
async def test_bad_input_is_rejected_by_name(scripts, script, kw, field):
    with pytest.raises(ScriptRejected) as exc:
        await getattr(scripts, script)(**kw)
    assert exc.value.details == {"field": field}


async def test_an_entry_that_is_no_id_is_skipped_not_an_error(scripts):
    """The ids come from nodes:all and pools:index: one corrupt entry must not fail the batch
    (it used to reject the whole call, and with it every stats snapshot)."""
    await scripts.register_node_v2(
        node_id="ok", now_ms=1, ttl_ms=60_000, region="eu", gpu_tier="a100",
        lang_sets=[["en", "pt-br"]], capacity=4, services={}, gateway_id="gw", conn_id="c",
    )  # fmt: skip
    await scripts.heartbeat_with_pool_assign(node_id="ok", conn_id="c", gateway_id="gw", now_ms=2)
    nodes = await scripts.nodes_summary(node_ids=["ok", "bad id", "a}b"])
    assert (nodes.alive, nodes.capacity, nodes.invalid) == (1, 4, ["bad id", "a}b"])
    rows = await scripts.pools_summary(
        shard_ids=["en_zh:eu:a100", "en_pt-br:eu:a100:0", "en_zh:eu:a100:0}", "EN_zh:eu:a100:0"]
    )
    assert [r.skipped for r in rows] == [True, False, True, True]
    assert (rows[1].members, rows[1].capacity) == (1, 4)
