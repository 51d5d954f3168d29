"""Two scheduling cells on a Redis Cluster, routed by region, falling back for each other.

A local cluster of three masters (one replica each), the replicated stack with
``LINGUA_CELLS=eu=eu,us=us,*=eu``: a node of region eu is registered in cell eu, one of
region us in cell us, and each cell's keys sit on its own master. A session of region eu is
scheduled in eu; one whose pair no eu node covers falls back to us; one that names no region
takes its gateway's (``LINGUA_GATEWAY_REGION=us``); one that arrives while every eu node is
busy falls back to us too; and a session of us whose pair only eu covers falls back to eu.
Each fall-back is counted in the home cell (``stats:fallbacks``) and shown by the stats
API."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from lingua_node_agent import JobContext, JobOutcome
from lingua_shared.devcluster import LocalCluster
from lingua_shared.keys import Keys
from lingua_shared.protocol import JobAssign
from tests.support.agents import node, node_url, running
from tests.support.clusters import local_cluster
from tests.support.helpers import eventually, node_pools, node_ready, node_state, register_frame
from tests.support.sessions import answers, open_session, send_utterance, session_url
from tests.support.stack import JOB_ENV, JOB_SERVICES, started_stack

pytestmark = pytest.mark.integration

EU, US = Keys("eu"), Keys("us")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cells-cluster"), replicas=1) as c:
        yield c


@pytest.fixture
def cells_stack(cluster, cluster_redis, stack_env, tmp_path: Path, request):
    env = {
        **stack_env,
        **JOB_ENV,
        "LINGUA_REDIS_URL": cluster.url,
        "LINGUA_REDIS_CLUSTER": "true",
        "LINGUA_CELLS": "eu=eu,us=us,*=eu",
        "LINGUA_CELL_FALLBACK": "eu>us,us>eu",
        "LINGUA_JOB_DEADLINE_MS": "6000",
        "LINGUA_GAP_TIMEOUT_MS": "8000",
    }
    services = (*(sv for sv in JOB_SERVICES if sv[0] != "gw-b"), ("stats-1", "stats"))
    with started_stack(env, tmp_path, request, services) as s:
        # clients are on gw-b, whose own region is us
        s.start("gw-b", "gateway", LINGUA_GATEWAY_REGION="us").wait_ready()
        yield s


class Tagged:
    """Answers with the node's id; ``hold`` keeps each job that long (a busy node)."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.started = asyncio.Event()

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        self.started.set()
        await asyncio.sleep(self.hold)
        return JobOutcome(text_asr="asr", text_translated=f"{ctx.node_id} #{job.utterance_index}")


async def answered_by(ws: Any, sid: str, timeout: float = 15) -> str:
    await send_utterance(ws, sid, 0)
    (msg,) = await answers(ws, 1, timeout=timeout)
    assert msg["type"] == "translation_result", msg
    return str(msg["text_translated"]).split(" #")[0]


async def test_two_cells_serve_their_regions_and_fall_back(
    cluster: LocalCluster, cells_stack, cluster_redis: Redis
) -> None:
    busy = Tagged(hold=3.0)
    nodes = [
        # eu covers de, en and zh, with one slot; us covers en, ja and zh
        node(cells_stack, "node-eu", busy, region="eu", lang_sets=[["de", "en", "zh"]], capacity=1),
        node(cells_stack, "node-us", Tagged(), region="us", lang_sets=[["en", "ja", "zh"]]),
    ]
    url = session_url(cells_stack)
    async with running(*nodes):
        # each node is registered in its region's cell, and only there
        assert await cluster_redis.exists(EU.node("node-eu"), US.node("node-us")) == 2
        assert await cluster_redis.exists(US.node("node-eu"), EU.node("node-us")) == 0

        # eu's pair, eu's region: eu's node (and its slot is now taken for 3 s)
        ws1, s1 = await open_session(url, "zh", "en", region="eu")
        # eu has no node for ja: the session falls back to us
        ws2, s2 = await open_session(url, "ja", "en", region="eu")
        # no region named: the gateway's own (us)
        ws3, s3 = await open_session(url, "zh", "en")
        async with ws1, ws2, ws3:
            await send_utterance(ws1, s1, 0)
            await asyncio.wait_for(busy.started.wait(), 10)
            assert await answered_by(ws2, s2) == "node-us"
            assert await answered_by(ws3, s3) == "node-us"
            # eu's only node is busy now: a new eu session falls back to us
            ws4, s4 = await open_session(url, "zh", "en", region="eu")
            async with ws4:
                assert await answered_by(ws4, s4) == "node-us"
            (first,) = await answers(ws1, 1, timeout=15)
            assert first["text_translated"] == "node-eu #0", first
            # us has no node for de: a us session (the gateway's region) falls back to eu
            ws5, s5 = await open_session(url, "de", "en")
            async with ws5:
                assert await answered_by(ws5, s5) == "node-eu"

        # every session's record is in the cell it was placed in
        for sid in (s1, s5):
            assert await cluster_redis.exists(EU.session(sid)) == 1, sid
        for sid in (s2, s3, s4):
            assert await cluster_redis.exists(US.session(sid)) == 1, sid
            assert await cluster_redis.exists(EU.session(sid)) == 0, sid
        # two sessions of eu went to us, one of us to eu
        assert await cluster_redis.hgetall(EU.fallbacks) == {b"us": b"2"}
        assert await cluster_redis.hgetall(US.fallbacks) == {b"eu": b"1"}

        # the stats API shows both cells and the fall-backs
        base = cells_stack.procs["stats-1"].base_url
        async with httpx.AsyncClient(base_url=base) as http:
            listed = (await http.get("/api/v1/nodes")).json()
            cells_of = {n["node_id"]: n.get("cell") for n in listed}
            assert cells_of == {"node-eu": "eu", "node-us": "us"}, listed
            stats: dict[str, Any] = {}
            for _ in range(50):  # the snapshot is rebuilt in the background
                stats = (await http.get("/api/v1/stats")).json()
                if stats.get("fallbacks") == 3:
                    break
                await asyncio.sleep(0.2)
            assert stats.get("fallbacks") == 3, json.dumps(stats)[:2000]
            per_cell = {c["name"]: c for c in stats["cells"]}
            assert per_cell["eu"]["fallbacks_out"] == {"us": 2}, per_cell
            assert per_cell["us"]["fallbacks_out"] == {"eu": 1}, per_cell
            assert per_cell["eu"]["ladder"] == ["eu", "us"], per_cell

    # each cell lives on one master, and the two cells on two different masters
    eu_master, us_master = cluster.master_of(EU.prefix), cluster.master_of(US.prefix)
    assert eu_master.port != us_master.port
    for master, keys, other in ((eu_master, EU, US), (us_master, US, EU)):
        client = Redis(port=master.port)
        try:
            assert await client.keys(keys.prefix + "*"), f"no key of {keys.cell} on its master"
            assert await client.keys(other.prefix + "*") == []
        finally:
            await client.aclose()


async def test_a_node_registering_again_in_another_region_leaves_its_old_cell(
    cells_stack, cluster_redis: Redis
) -> None:
    """Registered in eu, the same connection registers again with region us: the node is in
    us's pools, and eu's record is gone at once, not left schedulable until its TTL (three
    15 s beats, as lingua's agent beats) runs out; its beats go on reaching us."""
    frame = functools.partial(register_frame, "node-mover", heartbeat_interval_ms=15_000)
    async with connect(node_url(cells_stack)) as ws:
        await ws.send(frame(region="eu"))
        assert json.loads(await ws.recv())["type"] == "node_register_ack"
        assert await node_ready(cluster_redis, EU, "node-mover")
        assert await node_pools(cluster_redis, EU, "node-mover")

        await ws.send(frame(region="us"))
        assert json.loads(await ws.recv())["type"] == "node_register_ack"
        assert await node_ready(cluster_redis, US, "node-mover")
        assert await node_pools(cluster_redis, US, "node-mover")

        async def gone_from_eu() -> bool:
            return await cluster_redis.exists(EU.node("node-mover")) == 0

        await eventually(gone_from_eu, timeout=5, what="the eu record removed")
        assert await node_pools(cluster_redis, EU, "node-mover") == set()

        beat = {"type": "node_heartbeat", "node_id": "node-mover", "resource_usage": {}}
        for cpu in range(1, 4):
            beat["resource_usage"] = {"cpu_percent": cpu, "running_jobs": 0}
            await ws.send(json.dumps(beat))

        async def beats_in_us() -> bool:
            state = await node_state(cluster_redis, US, "node-mover")
            return state.get("cpu_percent") in ("3", "3.0") and state.get("status") == "ready"

        await eventually(beats_in_us, what="the beats applied in us")
        assert await cluster_redis.exists(EU.node("node-mover")) == 0
