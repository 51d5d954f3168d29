"""The stats app against real Redis and RabbitMQ, driven through its own lifespan."""

from __future__ import annotations

import asyncio

import httpx

from lingua_shared.settings import Settings
from lingua_shared.testing import ON_CLUSTER, pooled_node
from lingua_stats.__main__ import show
from lingua_stats.app import create_app
from lingua_stats.snapshot_model import Snapshot

NOW = 1_700_000_000_000
SERVICES = {"asr": ["en", "ja", "zh"], "semantic": ["en", "ja", "zh"]}


def make_settings(redis_url: str, amqp_url: str, bus_prefix: str) -> Settings:
    return Settings(redis_url=redis_url, amqp_url=amqp_url, bus_prefix=bus_prefix, cell="test")


async def register(scripts, node_id: str, lang_sets, region: str = "eu") -> None:  # type: ignore[no-untyped-def]
    await pooled_node(scripts, node_id, lang_sets, region, now_ms=NOW, services=SERVICES)


async def test_health_ready_metrics_and_live_views(redis_url, amqp_url, bus_prefix, scripts):
    app = create_app(make_settings(redis_url, amqp_url, bus_prefix))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stats") as client,
    ):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "checks": {"redis": True, "amqp": True, "consumers": {}},
        }

        empty = (await client.get("/api/v1/pools")).json()
        assert empty["groups"] == [] and empty["nodes"]["registered"] == 0
        assert (await client.get("/api/v1/nodes")).json() == []

        await register(scripts, "n1", [["en", "zh"], ["en", "ja", "zh"]])
        await register(scripts, "n2", [["en", "zh"]], region="us")
        await scripts.node_offline(node_id="n2", mode="dropped", conn_id="c-n2", now_ms=NOW)

        # live: the very next request sees the new state (no cache, N8)
        pools = (await client.get("/api/v1/pools")).json()
        assert [(g["langset"], g["region"]) for g in pools["groups"]] == [
            (["en", "ja", "zh"], "eu"),
            (["en", "zh"], "eu"),
            (["en", "zh"], "us"),
        ]
        assert [
            [(m["node_id"], m["schedulable"]) for s in g["shards"] for m in s["members"]]
            for g in pools["groups"]
        ] == [[("n1", True)], [("n1", True)], [("n2", False)]]
        assert pools["groups"][0]["shards"][0]["shard_id"] == "en_ja_zh:eu:a100:0"
        assert pools["groups"][0]["shards"][0]["capacity"] == 4
        assert pools["nodes"] == {
            "registered": 2,
            "alive": 2,
            "connected": 1,
            "schedulable": 1,
            "in_pools": 2,
        }

        nodes = (await client.get("/api/v1/nodes")).json()
        assert [(n["node_id"], n["connected"], n["schedulable"]) for n in nodes] == [
            ("n1", True, True),
            ("n2", False, False),
        ]
        assert nodes[0]["pools"] == ["en_ja_zh:eu:a100:0", "en_zh:eu:a100:0"]
        assert nodes[0]["lang_sets"] == [["en", "zh"], ["en", "ja", "zh"]]

        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'lingua_stats_reads_total{outcome="ok",view="pools"} 2.0' in metrics.text
        assert 'lingua_stats_reads_total{outcome="ok",view="nodes"} 2.0' in metrics.text
        assert 'lingua_stats_read_seconds_count{view="pools"} 2.0' in metrics.text


async def test_not_ready_outside_the_lifespan(redis_url, amqp_url, bus_prefix):
    app = create_app(make_settings(redis_url, amqp_url, bus_prefix))
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stats") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503
        pools = await client.get("/api/v1/pools")
        assert pools.status_code == 503
        assert pools.json()["code"] == "SCHEDULER_DEPENDENCY_DOWN"


async def test_show_prints_the_live_table(redis_url, scripts, capsys):
    await register(scripts, "n1", [["en", "zh"]])
    assert await show(redis_url, "test", None, ON_CLUSTER) == 0
    out = capsys.readouterr().out
    assert "registered=1" in out and "schedulable=1" in out
    assert "n1" in out and "en_zh:eu:a100:0" in out


async def test_show_reports_a_redis_outage(capsys):
    assert await show("redis://127.0.0.1:1/0", "test", None) == 1
    assert "did not answer" in capsys.readouterr().err


async def test_stats_snapshot_built_at_start_then_every_interval(
    redis_url, amqp_url, bus_prefix, scripts
):
    await register(scripts, "n1", [["en", "zh"]])
    settings = make_settings(redis_url, amqp_url, bus_prefix).model_copy(
        update={"stats_interval_s": 0.2}
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stats") as client,
    ):
        # cold start: the first snapshot exists as soon as the app is up
        assert (await client.get("/readyz")).status_code == 200
        first = await client.get("/api/v1/stats")
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("application/json")
        snap = Snapshot.model_validate(first.json())
        assert snap.nodes.registered == 1 and [n.node_id for n in snap.node_list] == ["n1"]
        assert snap.catalog.url is None and len(snap.series) == 60

        # a node registered now is not in the snapshot until the next build
        await register(scripts, "n2", [["en", "zh"]], region="us")
        again = Snapshot.model_validate((await client.get("/api/v1/stats")).json())
        assert again.generated_at_ms == snap.generated_at_ms and again.nodes.registered == 1
        for _ in range(50):
            await asyncio.sleep(0.05)
            later = Snapshot.model_validate((await client.get("/api/v1/stats")).json())
            if later.nodes.registered == 2:
                break
        assert later.nodes.registered == 2 and later.generated_at_ms > snap.generated_at_ms
        assert later.nodes.by_region == {"eu": 1, "us": 1}

        metrics = (await client.get("/metrics")).text
        assert 'lingua_stats_snapshot_builds_total{outcome="ok"}' in metrics


async def test_stats_is_503_before_any_snapshot(redis_url, amqp_url, bus_prefix):
    app = create_app(make_settings(redis_url, amqp_url, bus_prefix))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s") as c:
        r = await c.get("/api/v1/stats")
        assert r.status_code == 503 and r.json()["code"] == "SCHEDULER_DEPENDENCY_DOWN"
