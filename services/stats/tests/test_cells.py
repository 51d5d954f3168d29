"""Stats over several scheduling cells (``LINGUA_CELLS``), against real Redis (and RabbitMQ for
the app): two cells with nodes registered in each by the real scripts, job counters flushed
into each by the dispatcher's recorder, a fallbacks hash in one. The snapshot totals the
cells and lists each; the live pool and node views, the page and ``show`` cover every cell.

Each test uses cells of its own (``t-<uuid>``) and deletes their keys afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from redis.asyncio import Redis

from lingua_dispatcher.stats_recorder import StatsRecorder
from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts
from lingua_shared.settings import Settings
from lingua_shared.testing import ON_CLUSTER, pooled_node
from lingua_stats.__main__ import show
from lingua_stats.app import create_app
from lingua_stats.cells import CellPoolView, each_cell
from lingua_stats.dashboard import render_page
from lingua_stats.snapshot import build_snapshot
from lingua_stats.snapshot_model import CatalogView, Snapshot

NOW = 1_700_000_000_000
SERVICES = {"asr": ["en", "ja", "zh"], "semantic": ["en", "ja", "zh"]}


@dataclass
class TwoCells:
    a: str  # the default cell: region eu and every other region
    b: str  # region us; no fallback
    sa: Scripts
    sb: Scripts

    def settings(self, **over: object) -> Settings:
        return Settings(
            cell=self.a,
            cells=f"eu={self.a},us={self.b},*={self.a}",
            cell_fallback=f"{self.a}>{self.b},{self.b}",
            **over,  # type: ignore[arg-type]
        )


async def register(scripts, node_id: str, lang_sets, region: str, gpu: str) -> None:  # type: ignore[no-untyped-def]
    await pooled_node(scripts, node_id, lang_sets, region, gpu, now_ms=NOW, services=SERVICES)


async def delete_cells(redis: Redis, *cells: str) -> None:
    for cell in cells:
        for key in await redis.keys(Keys(cell).prefix + "*"):
            await redis.delete(key)


@pytest.fixture
async def cells(redis: Redis, scripts: Scripts) -> AsyncIterator[TwoCells]:
    """Cell a: gpu-eu-1 (connected) and gpu-eu-2 (dropped), eu/a100 en-zh; cell b:
    gpu-us-1 (us/t4 en-zh) and gpu-us-2 (us/t4 en-ja); the sessions of a placed in b three times."""
    tag = uuid.uuid4().hex[:8]
    a, b = f"t-{tag}-a", f"t-{tag}-b"
    two = TwoCells(a, b, scripts.for_cell(Keys(a)), scripts.for_cell(Keys(b)))
    try:
        await register(two.sa, "gpu-eu-1", [["en", "zh"]], "eu", "a100")
        await register(two.sa, "gpu-eu-2", [["en", "zh"]], "eu", "a100")
        await two.sa.node_offline(
            node_id="gpu-eu-2", mode="dropped", conn_id="c-gpu-eu-2", now_ms=NOW
        )
        await register(two.sb, "gpu-us-1", [["en", "zh"]], "us", "t4")
        await register(two.sb, "gpu-us-2", [["en", "ja"]], "us", "t4")
        await redis.hset(Keys(a).node("gpu-eu-1"), mapping={"running": 1, "reserved": 1})
        await redis.hset(Keys(a).fallbacks, b, 3)
        yield two
    finally:
        await delete_cells(redis, a, b)


async def test_the_snapshot_totals_every_cell_and_lists_each(redis, cells: TwoCells):
    a, b = cells.a, cells.b
    ka, kb = Keys(a), Keys(b)
    rec_a, rec_b = StatsRecorder(redis, ka), StatsRecorder(redis, kb)
    for _ in range(3):
        rec_a.done("en", "zh", 40, ts_ms=NOW - 2_000)  # bucket 50
        rec_a.dispatched(4, ts_ms=NOW - 2_000)  # bucket 5
    rec_b.done("en", "zh", 900, ts_ms=NOW - 2_000)  # bucket 1000, the same second as a's
    rec_b.dispatched(250, ts_ms=NOW - 2_000)  # bucket 300
    rec_a.failed("JOB_TIMEOUT", "late", src="en", tgt="zh", job_id="ja", ts_ms=NOW - 5_000)
    rec_b.failed("NO_AVAILABLE_NODE", "none", src="en", tgt="ja", job_id="jb", ts_ms=NOW - 1_000)
    assert await rec_a.flush() and await rec_b.flush()
    await redis.hset(ka.exclusions, mapping={"busy": 2})
    await redis.hset(kb.exclusions, mapping={"busy": 1, "cooldown": 4})
    await redis.hset(kb.unserved, "fr:de", 2)
    await redis.zadd(ka.sessions_active, {"s1": NOW - 1_000})
    await redis.zadd(kb.sessions_active, {"s2": NOW - 1_000, "s3": NOW - 2_000})
    await redis.sadd(kb.nodes_all, "bad id")  # a malformed entry, named with its cell

    snap = await build_snapshot(cells.sa, cells.settings(), CatalogView(), NOW)

    n = snap.nodes
    assert (n.registered, n.alive, n.connected, n.schedulable) == (5, 4, 3, 3)
    assert n.by_region == {"eu": 2, "us": 2} and n.by_gpu_tier == {"a100": 2, "t4": 2}
    assert (n.load.capacity, n.load.running, n.load.reserved) == (16, 1, 1)
    assert n.load.utilization == round(2 / 16, 4)
    # least healthy first over both cells; the malformed entry of b first of all
    assert [(r.cell, r.node_id, r.connected, r.schedulable) for r in snap.node_list] == [
        (b, "bad id", False, False),
        (a, "gpu-eu-2", False, False),
        (a, "gpu-eu-1", True, True),
        (b, "gpu-us-1", True, True),
        (b, "gpu-us-2", True, True),
    ]
    # the default cell's pools first, each cell's sorted
    assert [(p.cell, p.langset, p.region, p.members, p.schedulable) for p in snap.pools] == [
        (a, ["en", "zh"], "eu", 2, 1),
        (b, ["en", "ja"], "us", 1, 1),
        (b, ["en", "zh"], "us", 1, 1),
    ]
    assert snap.sessions_active == 3
    assert snap.language_pairs == {"en->zh": 5, "en->ja": 1}
    assert snap.jobs_per_s == pytest.approx(6 / 60, abs=1e-3)
    assert snap.errors_by_code == {"JOB_TIMEOUT": 1, "NO_AVAILABLE_NODE": 1}
    assert (snap.dispatch_latency.count, snap.dispatch_latency.p99_ms) == (4, 300.0)
    assert (snap.roundtrip_latency.count, snap.roundtrip_latency.p99_ms) == (4, 1000.0)
    # one series over both cells: the second both wrote counts 3 + 1 jobs
    two_ago = snap.series[-3]
    assert (two_ago.jobs, two_ago.dispatch_p99_ms, two_ago.roundtrip_p99_ms) == (4, 300.0, 1000.0)
    assert [(e.code, e.cell) for e in snap.recent_errors] == [
        ("NO_AVAILABLE_NODE", b),
        ("JOB_TIMEOUT", a),
    ]  # the newest of both cells first
    assert snap.exclusions == {"busy": 3, "cooldown": 4} and snap.unserved == {"fr:de": 2}
    assert snap.invalid_records.nodes == 1
    assert snap.invalid_records.examples == [f"{b}/node:bad id"]
    assert snap.fallbacks == 3

    ca, cb = snap.cells
    assert (ca.name, ca.default, ca.regions, ca.ladder) == (a, True, ["eu", "*"], [a, b])
    assert (cb.name, cb.default, cb.regions, cb.ladder) == (b, False, ["us"], [b])
    assert (ca.nodes.registered, ca.nodes.connected, ca.nodes.schedulable) == (2, 1, 1)
    assert (cb.nodes.registered, cb.nodes.connected, cb.nodes.schedulable) == (3, 2, 2)
    assert ca.nodes.load.capacity == 8 and ca.nodes.by_region == {"eu": 2}
    assert (ca.pools, cb.pools) == (1, 2)
    assert (ca.sessions_active, cb.sessions_active) == (1, 2)
    assert (ca.jobs, ca.failed, ca.jobs_per_s) == (4, 1, round(4 / 60, 3))
    assert (cb.jobs, cb.failed) == (2, 1)
    assert (ca.fallbacks_out, ca.fallbacks_in) == ({b: 3}, {})
    assert (cb.fallbacks_out, cb.fallbacks_in) == ({}, {a: 3})

    # the list is capped over both cells together, the least healthy kept
    capped = await build_snapshot(
        cells.sb, cells.settings(stats_node_list_max=2), CatalogView(), NOW
    )
    assert [(r.cell, r.node_id) for r in capped.node_list] == [(b, "bad id"), (a, "gpu-eu-2")]
    assert capped.nodes.registered == 5 and capped.cells[0].name == a  # whatever scripts' cell


async def test_one_cell_is_listed_alone_and_totals_are_its_own(redis, keys, scripts):
    await register(scripts, "n1", [["en", "zh"]], "eu", "a100")
    await redis.zadd(keys.sessions_active, {"s1": NOW - 1_000})
    snap = await build_snapshot(scripts, Settings(cell="test"), CatalogView(), NOW)
    (only,) = snap.cells
    assert (only.name, only.default, only.regions, only.ladder) == ("test", True, ["*"], ["test"])
    assert only.nodes == snap.nodes and only.sessions_active == snap.sessions_active == 1
    assert only.pools == len(snap.pools) == 1 and snap.pools[0].cell == "test"
    assert snap.node_list[0].cell == "test"
    assert (snap.fallbacks, only.fallbacks_out, only.fallbacks_in) == (0, {}, {})


async def test_live_views_stats_and_page_cover_every_cell(
    redis_url, amqp_url, bus_prefix, cells: TwoCells
):
    a, b = cells.a, cells.b
    app = create_app(cells.settings(redis_url=redis_url, amqp_url=amqp_url, bus_prefix=bus_prefix))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stats") as client,
    ):
        body = (await client.get("/api/v1/pools")).json()
        pools = CellPoolView.model_validate(body)
        assert pools.cells == [a, b]
        assert [(g.cell, g.langset, g.region) for g in pools.groups] == [
            (a, ["en", "zh"], "eu"),
            (b, ["en", "ja"], "us"),
            (b, ["en", "zh"], "us"),
        ]
        assert [m.node_id for m in pools.groups[0].shards[0].members] == ["gpu-eu-1", "gpu-eu-2"]
        assert body["nodes"] == {
            "registered": 4,
            "alive": 4,
            "connected": 3,
            "schedulable": 3,
            "in_pools": 4,
        }
        nodes = (await client.get("/api/v1/nodes")).json()
        assert [(n["cell"], n["node_id"], n["connected"]) for n in nodes] == [
            (a, "gpu-eu-1", True),
            (a, "gpu-eu-2", False),
            (b, "gpu-us-1", True),
            (b, "gpu-us-2", True),
        ]
        assert nodes[2]["pools"] == ["en_zh:us:t4:0"]

        snap = Snapshot.model_validate((await client.get("/api/v1/stats")).json())
        assert snap.nodes.registered == 4 and snap.fallbacks == 3
        assert [(c.name, c.nodes.registered, c.fallbacks_out) for c in snap.cells] == [
            (a, 2, {b: 3}),
            (b, 2, {}),
        ]
        page = (await client.get("/")).text
        assert f"cells {a}, {b}</span>" in page and f"<title>Lingua scheduler: {a}, {b}<" in page


async def test_show_prints_every_cell_or_the_one_asked_for(redis_url, cells: TwoCells, capsys):
    a, b = cells.a, cells.b
    cell_map = cells.settings().cell_map()
    assert await show(redis_url, [a, b], None, ON_CLUSTER, cell_map) == 0
    out = capsys.readouterr().out
    head_a = f"== cell {a}: regions eu,*  ladder {a}>{b}  fallbacks out {b}=3"
    head_b = f"== cell {b}: regions us  ladder {b}  fallbacks out none"
    assert head_a in out and head_b in out and out.index(head_a) < out.index(head_b)
    part_a, part_b = out.split(head_b)
    assert "gpu-eu-1" in part_a and "en_zh:eu:a100:0" in part_a and "gpu-us-1" not in part_a
    assert "gpu-us-2" in part_b and "en_ja:us:t4:0" in part_b and "gpu-eu-1" not in part_b
    assert "registered=2" in part_a and "registered=2" in part_b

    assert await show(redis_url, b, None, ON_CLUSTER, cell_map) == 0
    only_b = capsys.readouterr().out
    assert "== cell" not in only_b and "gpu-us-1" in only_b and "gpu-eu-1" not in only_b


async def test_each_cell_reads_at_most_the_limit_at_once_and_keeps_the_order():
    running, peak = 0, 0

    async def read(cell: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (5 - cell % 5))
        running -= 1
        return cell * 10

    assert await each_cell(list(range(12)), read, limit=3) == [c * 10 for c in range(12)]
    assert peak == 3

    finished: list[int] = []

    async def fails(cell: int) -> int:
        await asyncio.sleep(0.01 * cell)
        if cell == 0:
            raise ConnectionError("down")
        finished.append(cell)
        return cell

    with pytest.raises(ConnectionError):
        await each_cell([0, 1, 2], fails)
    assert finished == [1, 2]  # none left running behind the error


def test_the_page_names_every_cell_escaped():
    assert "cell main</span>" in render_page(["main"])
    page = render_page(["eu", '<script>alert("x")</script>'])
    assert "cells eu, &lt;script&gt;alert" in page and "<script>alert" not in page
