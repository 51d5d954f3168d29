"""The snapshot builder against real Redis: nodes and pools from the Lua scripts, job figures
from the dispatcher's recorder flushed with chosen values, and every field checked."""

from __future__ import annotations

import pytest

from lingua_dispatcher.stats_recorder import StatsRecorder
from lingua_gateway.session_store import SessionStore
from lingua_shared.runtime import now_ms
from lingua_shared.settings import Settings
from lingua_shared.testing import pooled_node
from lingua_stats.snapshot import build_snapshot, percentile
from lingua_stats.snapshot_model import CatalogView

NOW = 1_700_000_000_000
NOW_S = NOW // 1000
SERVICES = {"asr": ["en", "ja", "zh"], "semantic": ["en", "ja", "zh"]}


async def register(scripts, node_id: str, lang_sets, region: str, gpu: str) -> None:  # type: ignore[no-untyped-def]
    await pooled_node(scripts, node_id, lang_sets, region, gpu, now_ms=NOW, services=SERVICES)


def test_percentile_is_the_upper_bound_of_the_bucket_reaching_the_rank():
    assert percentile({}, 0.5) is None
    assert percentile({5: 98, 300: 2}, 0.5) == 5.0
    assert percentile({5: 98, 300: 2}, 0.98) == 5.0
    assert percentile({5: 98, 300: 2}, 0.99) == 300.0
    assert percentile({1000: 1}, 0.01) == 1000.0


async def test_every_field_of_the_snapshot(redis, keys, scripts):
    await register(scripts, "n1", [["en", "zh"], ["en", "ja", "zh"]], "eu", "a100")
    await register(scripts, "n2", [["en", "zh"]], "eu", "a100")
    await register(scripts, "n3", [["en", "zh"]], "us", "t4")
    await scripts.node_offline(node_id="n3", mode="dropped", conn_id="c-n3", now_ms=NOW)
    await redis.hset(keys.node("n1"), mapping={"running": 1, "reserved": 1})

    rec = StatsRecorder(redis, keys)
    for _ in range(98):
        rec.dispatched(4, ts_ms=NOW - 2_000)  # bucket 5
    rec.dispatched(250, ts_ms=NOW - 2_000)  # bucket 300
    rec.dispatched(40_000, ts_ms=NOW)  # beyond the last bucket: counted in 30000
    for _ in range(3):
        rec.done("en", "zh", 40, ts_ms=NOW - 2_000)  # bucket 50
    rec.done("ja", "en", 900, ts_ms=NOW)  # bucket 1000
    rec.failed(
        "JOB_TIMEOUT", "no node completed", src="en", tgt="zh", session_id="s1", job_id="j1",
        ts_ms=NOW - 1_000,
    )  # fmt: skip
    rec.failed("NO_AVAILABLE_NODE", "no node serves", src="fr", tgt="de", ts_ms=NOW - 10_000)
    rec.done("en", "zh", 5, ts_ms=NOW - 60_000)  # outside the 60 s window
    assert await rec.flush()

    await redis.hset(keys.exclusions, mapping={"busy": 3, "cooldown": 1})
    await redis.hset(keys.unserved, "fr:de", 2)
    await redis.zadd(keys.sessions_active, {"s1": NOW - 1_000, "s2": NOW - 599_000})
    await redis.zadd(keys.sessions_active, {"old": NOW - 601_000})

    catalog = CatalogView(url="http://hub", ok=True, services=[{"name": "asr-en"}])
    snap = await build_snapshot(scripts, Settings(cell="test"), catalog, NOW)

    assert snap.generated_at_ms == NOW and snap.window_s == 60
    assert 0 < snap.build_ms < 1_000
    n = snap.nodes
    assert (n.registered, n.alive, n.connected, n.schedulable) == (3, 3, 2, 2)
    assert n.by_region == {"eu": 2, "us": 1} and n.by_gpu_tier == {"a100": 2, "t4": 1}
    assert n.load.model_dump() == {
        "capacity": 12,
        "running": 1,
        "reserved": 1,
        "utilization": round(2 / 12, 4),
    }
    # least healthy first: the dropped node leads the list
    assert [(r.node_id, r.region, r.connected, r.schedulable) for r in snap.node_list] == [
        ("n3", "us", False, False),
        ("n1", "eu", True, True),
        ("n2", "eu", True, True),
    ]
    assert snap.node_list[1].lang_sets == [["en", "zh"], ["en", "ja", "zh"]]
    assert snap.node_list[1].last_heartbeat_age_ms == 0
    # the list is capped; counts still cover every node
    capped = await build_snapshot(
        scripts, Settings(cell="test", stats_node_list_max=1), catalog, NOW
    )
    assert [r.node_id for r in capped.node_list] == ["n3"]
    assert capped.nodes.registered == 3 and capped.nodes.schedulable == 2

    pools = [
        (p.langset, p.region, p.gpu_tier, p.shards, p.members, p.schedulable, p.capacity)
        for p in snap.pools
    ]
    assert pools == [
        (["en", "ja", "zh"], "eu", "a100", 1, 1, 1, 4),
        (["en", "zh"], "eu", "a100", 1, 2, 2, 8),
        (["en", "zh"], "us", "t4", 1, 1, 0, 4),
    ]
    assert (snap.pools[1].running, snap.pools[1].reserved, snap.pools[1].load) == (1, 1, 0.25)

    assert snap.sessions_active == 2
    assert await redis.zrange(keys.sessions_active, 0, -1) == [b"s2", b"s1"]  # "old" trimmed
    assert snap.language_pairs == {"en->zh": 4, "fr->de": 1, "ja->en": 1}
    assert snap.jobs_per_s == pytest.approx(6 / 60, abs=1e-3)
    assert snap.dispatch_latency.model_dump() == {
        "count": 100,
        "p50_ms": 5.0,
        "p90_ms": 5.0,
        "p99_ms": 300.0,
    }
    assert snap.roundtrip_latency.model_dump() == {
        "count": 4,
        "p50_ms": 50.0,
        "p90_ms": 1000.0,
        "p99_ms": 1000.0,
    }
    assert snap.errors_by_code == {"JOB_TIMEOUT": 1, "NO_AVAILABLE_NODE": 1}
    assert [(e.code, e.session_id, e.job_id) for e in snap.recent_errors] == [
        ("NO_AVAILABLE_NODE", None, None),
        ("JOB_TIMEOUT", "s1", "j1"),
    ]  # newest pushed last (one LPUSH keeps the order of the flush)
    assert snap.recent_errors[1].ts_ms == NOW - 1_000
    assert snap.exclusions == {"busy": 3, "cooldown": 1}
    assert snap.unserved == {"fr:de": 2}

    assert len(snap.series) == 60
    assert snap.series[0].ts == NOW_S - 59 and snap.series[-1].ts == NOW_S
    last, two_ago = snap.series[-1], snap.series[-3]
    assert (last.jobs, last.failed, last.dispatch_p99_ms, last.roundtrip_p99_ms) == (
        1,
        0,
        30000.0,
        1000.0,
    )
    assert (two_ago.jobs, two_ago.dispatch_p99_ms, two_ago.roundtrip_p99_ms) == (3, 300.0, 50.0)
    assert (snap.series[-2].jobs, snap.series[-2].failed) == (1, 1)
    assert sum(p.jobs for p in snap.series) == 6
    assert snap.catalog == catalog


async def test_an_empty_cell_builds_an_empty_snapshot(redis, keys, scripts):
    snap = await build_snapshot(scripts, Settings(cell="test"), CatalogView(), NOW)
    assert snap.nodes.registered == 0 and snap.node_list == [] and snap.pools == []
    assert snap.sessions_active == 0 and snap.jobs_per_s == 0.0
    assert snap.dispatch_latency.p99_ms is None and snap.dispatch_latency.count == 0
    assert len(snap.series) == 60 and all(p.jobs == 0 for p in snap.series)


async def test_gateway_sessions_index_feeds_sessions_active(redis, keys, scripts):
    store = SessionStore(redis, keys, ttl_s=600)
    await store.create("s1", {"gateway_id": "gw", "conn_id": "c1"})
    await store.create("s2", {"gateway_id": "gw", "conn_id": "c2"})
    assert await store.touch("s1", {"gateway_id": "gw", "conn_id": "c1"}) is False
    await store.unbind("s2", "c2")
    assert await redis.zrange(keys.sessions_active, 0, -1) == [b"s1"]
    snap = await build_snapshot(scripts, Settings(cell="test"), CatalogView(), now_ms())
    assert snap.sessions_active == 1
