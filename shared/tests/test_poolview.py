"""The live PoolView and node list, built by the real Lua scripts on a real Redis."""

from __future__ import annotations

from lingua_shared.keys import Keys
from lingua_shared.poolview import read_nodes, read_pool_view, render_text
from lingua_shared.scripts import Scripts

NOW = 1_700_000_000_000
TTL = 30_000
SERVICES = {"asr": ["en", "zh"], "semantic": ["en", "zh"]}

# node id -> (region, gpu tier, lang sets, capacity)
NODES = {
    "n1": ("eu", "a100", [["en", "zh"]], 4),
    "n2": ("eu", "a100", [["zh", "en"]], 2),  # unsorted on purpose: same pool as n1
    "n3": ("us", "t4", [["en", "de"]], 3),
}


async def bring_up(scripts: Scripts, now: int = NOW, max_shard_size: int = 256) -> None:
    for node_id, (region, gpu, lang_sets, capacity) in NODES.items():
        reg = await scripts.register_node_v2(
            node_id=node_id,
            now_ms=now,
            ttl_ms=TTL,
            region=region,
            gpu_tier=gpu,
            lang_sets=lang_sets,
            capacity=capacity,
            services=SERVICES,
            gateway_id="gw-1",
            conn_id=f"c-{node_id}",
        )
        assert reg.created
        hb = await scripts.heartbeat_with_pool_assign(
            node_id=node_id,
            conn_id=f"c-{node_id}",
            gateway_id="gw-1",
            now_ms=now + 100,
            max_shard_size=max_shard_size,
        )
        assert hb.alive and hb.pools_changed


def by_id(nodes):  # type: ignore[no-untyped-def]
    return {n.node_id: n for n in nodes}


async def test_empty_redis_gives_an_empty_view(redis, keys):
    view = await read_pool_view(redis, keys, NOW)
    assert view.groups == []
    assert view.nodes.model_dump() == {
        "registered": 0,
        "alive": 0,
        "connected": 0,
        "schedulable": 0,
        "in_pools": 0,
    }
    assert await read_nodes(redis, keys, NOW) == []
    assert "shards=0" in render_text(view, [])


async def test_groups_shards_members_and_both_meanings_of_online(redis, keys: Keys, scripts):
    await bring_up(scripts)
    # a slot reserved on n1 (as select_node will do); the next heartbeat rescores it
    await redis.hset(keys.node("n1"), "reserved", 1)
    assert (
        await scripts.heartbeat_with_pool_assign(
            node_id="n1", conn_id="c-n1", gateway_id="gw-1", now_ms=NOW + 1000
        )
    ).alive
    # n2's connection drops abnormally: kept in its pool, but unschedulable
    dropped = await scripts.node_offline(node_id="n2", mode="dropped", conn_id="c-n2", now_ms=NOW)
    assert dropped.code == 1

    view = await read_pool_view(redis, keys, NOW + 1500)
    assert view.generated_at_ms == NOW + 1500
    assert [(g.langset, g.region, g.gpu_tier) for g in view.groups] == [
        (["de", "en"], "us", "t4"),
        (["en", "zh"], "eu", "a100"),
    ]
    us, eu = view.groups
    assert [s.shard_id for s in eu.shards] == ["en_zh:eu:a100:0"]
    shard = eu.shards[0]
    assert shard.shard == 0
    assert [(m.node_id, m.score, m.schedulable) for m in shard.members] == [
        ("n1", 0.25, True),
        ("n2", 1000.0, False),
    ]
    assert (shard.capacity, shard.running, shard.reserved, shard.free) == (6, 0, 1, 3)
    assert [s.shard_id for s in us.shards] == ["de_en:us:t4:0"]
    assert [(m.node_id, m.score, m.schedulable) for m in us.shards[0].members] == [
        ("n3", 0.0, True)
    ]
    assert (us.shards[0].capacity, us.shards[0].free) == (3, 3)
    assert view.nodes.model_dump() == {
        "registered": 3,
        "alive": 3,
        "connected": 2,
        "schedulable": 2,
        "in_pools": 3,
    }

    nodes = await read_nodes(redis, keys, NOW + 1500)
    assert [n.node_id for n in nodes] == ["n1", "n2", "n3"]
    n = by_id(nodes)
    assert (n["n1"].connected, n["n1"].schedulable, n["n1"].alive) == (True, True, True)
    assert (n["n2"].connected, n["n2"].schedulable, n["n2"].alive) == (False, False, True)
    assert n["n2"].pools == ["en_zh:eu:a100:0"]  # N6: a drop keeps the pools for the grace
    assert n["n1"].lang_sets == [["en", "zh"]]
    assert n["n2"].lang_sets == [["en", "zh"]]  # stored sorted by register_node_v2
    assert (n["n1"].region, n["n1"].gpu_tier, n["n1"].capacity) == ("eu", "a100", 4)
    assert (n["n1"].reserved, n["n1"].running, n["n1"].status) == (1, 0, "ready")
    assert n["n1"].gateway_id == "gw-1"
    assert n["n1"].last_heartbeat_age_ms == 500
    assert n["n3"].last_heartbeat_age_ms == 1400
    assert n["n1"].ttl_remaining_ms is not None and 0 < n["n1"].ttl_remaining_ms <= TTL

    text = render_text(view, nodes)
    for needle in ("n1", "n2", "n3", "en_zh:eu:a100:0", "de_en:us:t4:0", "n2(1000.00 x)"):
        assert needle in text
    assert "schedulable=2" in text


async def test_expired_key_is_connected_for_display_but_not_schedulable(redis, keys, scripts):
    await bring_up(scripts)
    # the node key's TTL runs out before any sweep: exactly what PEXPIRE's end does
    await redis.delete(keys.node("n3"))

    n3 = by_id(await read_nodes(redis, keys, NOW))["n3"]
    assert (n3.alive, n3.connected, n3.schedulable) == (False, True, False)
    assert n3.ttl_remaining_ms is None and n3.region is None
    view = await read_pool_view(redis, keys, NOW)
    member = view.groups[0].shards[0].members[0]
    assert member.node_id == "n3" and member.score < 1000  # the score alone would mislead
    assert member.schedulable is False
    assert view.groups[0].shards[0].capacity == 0
    assert (view.nodes.alive, view.nodes.connected, view.nodes.schedulable) == (2, 3, 2)


async def test_full_shards_are_listed_in_order(redis, keys, scripts):
    await bring_up(scripts, max_shard_size=1)
    eu = (await read_pool_view(redis, keys, NOW)).groups[1]
    assert [(s.shard_id, s.shard) for s in eu.shards] == [
        ("en_zh:eu:a100:0", 0),
        ("en_zh:eu:a100:1", 1),
    ]
    assert [m.node_id for s in eu.shards for m in s.members] == ["n1", "n2"]
    assert [s.capacity for s in eu.shards] == [4, 2]


async def test_graceful_offline_of_all_empties_the_view(redis, keys, scripts):
    await bring_up(scripts)
    await scripts.node_offline(node_id="n2", mode="dropped", conn_id="c-n2", now_ms=NOW)
    for node_id in NODES:
        res = await scripts.node_offline(node_id=node_id, mode="graceful", now_ms=NOW + 2000)
        assert res.code == 1
    view = await read_pool_view(redis, keys, NOW + 2000)
    assert view.groups == []
    assert view.nodes.model_dump() == {
        "registered": 0,
        "alive": 0,
        "connected": 0,
        "schedulable": 0,
        "in_pools": 0,
    }
    assert await read_nodes(redis, keys, NOW + 2000) == []


async def test_reads_span_several_pipeline_batches(redis, keys, scripts):
    """More nodes than one batch (500): every one is read, none twice."""
    count = 1203
    reg = scripts.script("register_node_v2")
    hb = scripts.script("heartbeat_with_pool_assign")
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(count):
            node_id = f"bulk-{i:04d}"
            k, a = scripts.register_node_v2_args(
                node_id=node_id,
                now_ms=NOW,
                ttl_ms=TTL,
                region="eu",
                gpu_tier="a100",
                lang_sets=[["en", "zh"]],
                capacity=2,
                services=SERVICES,
                gateway_id="gw-1",
                conn_id="c",
            )
            await reg(keys=k, args=a, client=pipe)
            k, a = scripts.heartbeat_args(
                node_id=node_id, conn_id="c", gateway_id="gw-1", now_ms=NOW, max_shard_size=1
            )
            await hb(keys=k, args=a, client=pipe)
        await pipe.execute()

    view = await read_pool_view(redis, keys, NOW)
    (group,) = view.groups
    assert [s.shard for s in group.shards] == list(range(count))  # 1 member each: > 2 batches
    assert sum(s.capacity for s in group.shards) == 2 * count
    assert view.nodes.schedulable == count
    nodes = await read_nodes(redis, keys, NOW)
    assert [n.node_id for n in nodes] == [f"bulk-{i:04d}" for i in range(count)]
    assert all(n.schedulable and len(n.pools) == 1 for n in nodes)
