"""No single bad record can stop a snapshot (S1): records with a malformed field, put straight
into Redis behind the scripts' back, are skipped and counted (``invalid_records`` in the
snapshot and the pool view, ``lingua_stats_invalid_records`` on /metrics); the good records
are still totalled and the stats service still becomes ready."""

from __future__ import annotations

import time

import httpx
from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.poolview import read_nodes, read_pool_view
from lingua_shared.scripts import Scripts
from lingua_shared.settings import Settings
from lingua_stats.app import create_app
from lingua_stats.metrics import Metrics
from lingua_stats.snapshot import SnapshotService, build_snapshot
from lingua_stats.snapshot_model import CatalogView, Snapshot

NOW = 1_700_000_000_000
TTL = 600_000
GOOD = {"good-1": [["en", "zh"]], "good-2": [["en", "pt-br"]]}
# node id -> what is wrong with its record (each is registered first, then spoiled)
SPOILED = {
    "bad-json": {"lang_sets": '[["en", "zh"'},
    "bad-langs": {"lang_sets": '[["en", "EN US"]]'},
    "bad-cap": {"capacity": "lots"},
    "bad-running": {"running": "1e999"},
    "bad-region": {"region": "{eu}"},
}
BAD_NODE_IDS = ["bad id", "wrong-type"]  # not a node id; a node key holding a string
BAD_SHARDS = [
    "not-a-shard",
    "en_zh:eu:a100",  # no shard number
    "EN_zh:eu:a100:0",  # not as the rule stores codes
    "en:eu:a100:0",  # a one-language set
    "en_zh:eu:a100:0}",  # would leave the cell's hash tag
    "de_en:eu:a100:0",  # a pool key holding a string
]


async def seed(redis: Redis, keys: Keys, scripts: Scripts) -> None:
    for node_id, sets in {**GOOD, **{n: [["en", "zh"]] for n in SPOILED}}.items():
        await scripts.register_node_v2(
            node_id=node_id,
            now_ms=NOW,
            ttl_ms=TTL,
            region="eu",
            gpu_tier="a100",
            lang_sets=sets,
            capacity=4,
            services={},
            gateway_id="gw-1",
            conn_id=f"c-{node_id}",
        )
        await scripts.heartbeat_with_pool_assign(
            node_id=node_id, conn_id=f"c-{node_id}", gateway_id="gw-1", now_ms=NOW
        )
    for node_id, fields in SPOILED.items():
        await redis.hset(keys.node(node_id), mapping=fields)
    await redis.sadd(keys.nodes_all, *BAD_NODE_IDS, b"\xff\xfe-not-utf8")
    await redis.set(keys.node("wrong-type"), "x")
    await redis.sadd(keys.pools_index, *BAD_SHARDS, b"\xff_en:eu:a100:0")
    await redis.set(keys.pool("de_en:eu:a100:0"), "x")
    # counters the dispatchers and select_node write: one field each that is not a number
    # (a second at NOW for build_snapshot, one now for the service, which builds at wall time)
    for second in (NOW // 1000, int(time.time())):
        await redis.hset(keys.stats_second(second), mapping={"done": 3, "failed": "many"})
    await redis.hset(keys.exclusions, mapping={"busy": 2, "cooldown": "x"})


def check(snap: Snapshot) -> None:
    n = snap.nodes
    assert (n.registered, n.alive, n.schedulable) == (10, 2, 2)
    assert n.load.capacity == 8 and n.by_region == {"eu": 2}
    inv = snap.invalid_records
    assert (inv.nodes, inv.pool_shards, inv.counters) == (8, 7, 2)
    assert inv.total == 17
    # named for the operator, taken in turn from each kind
    assert inv.examples[:2] == ["node:bad id", "pool:EN_zh:eu:a100:0"]
    assert ":stats:sec:" in inv.examples[2] and inv.examples[2].endswith("/failed")
    assert len(inv.examples) == 10
    by_set = {tuple(p.langset): p for p in snap.pools}
    assert set(by_set) == {("en", "zh"), ("en", "pt-br")}
    # the spoiled nodes are still members of en_zh; the pool totals every member whose slot
    # counts read (good-1, bad-json, bad-langs, bad-region), as selection would see them
    assert (by_set["en", "zh"].members, by_set["en", "zh"].capacity) == (6, 16)
    # listed first, as the least healthy, as far as they can be read
    listed = {r.node_id: r for r in snap.node_list}
    assert set(SPOILED) | set(BAD_NODE_IDS) <= set(listed)
    assert listed["bad-json"].lang_sets == [] and listed["bad-cap"].capacity == 0
    assert snap.exclusions == {"busy": 2} and snap.jobs_per_s == round(3 / 60, 3)


async def test_a_snapshot_skips_and_counts_malformed_records(redis, keys, scripts):
    await seed(redis, keys, scripts)
    check(await build_snapshot(scripts, Settings(cell="test"), CatalogView(), NOW))


async def test_the_live_views_skip_them_too(redis, keys, scripts):
    await seed(redis, keys, scripts)
    view = await read_pool_view(redis, keys, NOW)
    assert sorted(g.langset for g in view.groups) == [["en", "pt-br"], ["en", "zh"]]
    assert view.invalid_records == 7
    nodes = {n.node_id: n for n in await read_nodes(redis, keys, NOW)}
    assert nodes["bad-json"].lang_sets == [] and nodes["bad-langs"].lang_sets == []
    assert nodes["good-2"].lang_sets == [["en", "pt-br"]]
    assert nodes["wrong-type"].alive is False


async def test_the_metric_counts_what_the_last_build_skipped(redis, keys, scripts):
    await seed(redis, keys, scripts)
    metrics = Metrics()
    service = SnapshotService(scripts, Settings(cell="test"), CatalogView, metrics)
    assert await service.build_once()

    def value(kind: str) -> float | None:
        return metrics.registry.get_sample_value("lingua_stats_invalid_records", {"kind": kind})

    assert (value("nodes"), value("pool_shards"), value("counters")) == (8, 7, 2)
    for key in await redis.keys(keys.prefix + "*"):
        await redis.delete(key)
    assert await service.build_once()
    assert (value("nodes"), value("pool_shards"), value("counters")) == (0, 0, 0)


async def test_the_stats_service_becomes_ready_anyway(redis_url, amqp_url, bus_prefix, scripts):
    await seed(scripts.redis, scripts.keys, scripts)
    settings = Settings(redis_url=redis_url, amqp_url=amqp_url, bus_prefix=bus_prefix, cell="test")
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stats") as client,
    ):
        assert (await client.get("/readyz")).status_code == 200
        check(Snapshot.model_validate((await client.get("/api/v1/stats")).json()))
        pools = await client.get("/api/v1/pools")
        assert pools.status_code == 200 and pools.json()["invalid_records"] == 7
        assert (await client.get("/api/v1/nodes")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'lingua_stats_invalid_records{kind="pool_shards"} 7.0' in metrics
