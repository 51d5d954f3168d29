"""The stack on a Redis Cluster (``LINGUA_REDIS_CLUSTER=true``): a local cluster of three
masters and three replicas (real ``redis-server`` processes, started and stopped here), every
service replicated as in the job-path tests, and a session's utterances answered in order,
exactly once. Every key the scheduler wrote is on the master of the cell's slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from lingua_node_agent import JobContext, JobOutcome
from lingua_shared.devcluster import LocalCluster
from lingua_shared.keys import Keys
from lingua_shared.protocol import JobAssign
from lingua_shared.testing import redis_for_tests
from tests.support.agents import node, running
from tests.support.invariants import settle_idle
from tests.support.sessions import answers, open_session, send_utterance, session_url
from tests.support.stack import CELL, JOB_ENV, JOB_SERVICES, started_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def cluster_redis(cluster: LocalCluster) -> AsyncIterator[Redis]:
    client = redis_for_tests(cluster.url, cluster=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def cluster_stack(cluster, cluster_redis, stack_env, tmp_path: Path, request):
    # the services are given a node that does not serve the cell: a client that is not the
    # cluster client would meet MOVED on every command
    owner = cluster.master_of(Keys(CELL).prefix)
    elsewhere = next(n for n in cluster.live() if n.port != owner.port)
    env = {
        **stack_env,
        **JOB_ENV,
        "LINGUA_REDIS_URL": f"redis://127.0.0.1:{elsewhere.port}/0",
        "LINGUA_REDIS_CLUSTER": "true",
        # the defaults' room for a job to be taken back and sent again (the job-path tests
        # shorten it): a failover stops every script for a few seconds
        "LINGUA_ACK_TIMEOUT_MS": "3000",
        "LINGUA_JOB_DEADLINE_MS": "30000",
        "LINGUA_GAP_TIMEOUT_MS": "35000",
        # and the defaults' node TTL floor and gateway liveness: the expiry hold keeps the
        # nodes through the outage while their gateways' liveness lasts (the test stack's
        # 1.5 s would lapse during it, and the nodes would expire and register again)
        "LINGUA_NODE_MIN_TTL_MS": "3000",
        "LINGUA_GATEWAY_LIVENESS_TTL_MS": "10000",
    }
    services = (*JOB_SERVICES, ("stats-1", "stats"))
    with started_stack(env, tmp_path, request, services) as s:
        yield s


class Echo:
    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        await asyncio.sleep(0.02 * (4 - job.utterance_index % 4))  # finish out of order
        return JobOutcome(
            text_asr=f"asr #{job.utterance_index}",
            text_translated=f"{job.src_lang}->{job.tgt_lang} #{job.utterance_index}",
        )


async def test_the_job_path_runs_on_a_redis_cluster(
    cluster: LocalCluster, cluster_stack, cluster_redis: Redis
) -> None:
    nodes = [node(cluster_stack, f"node-c{i}", Echo(), capacity=2) for i in range(2)]
    async with running(*nodes):
        ws, sid = await open_session(session_url(cluster_stack))
        async with ws:
            for i in range(8):
                await send_utterance(ws, sid, i)
            got = await answers(ws, 8)
            assert [m["type"] for m in got] == ["translation_result"] * 8, got
            assert [m["utterance_index"] for m in got] == list(range(8))
            assert [m["text_translated"] for m in got] == [f"zh->en #{i}" for i in range(8)]
            with pytest.raises(TimeoutError):  # exactly once
                await answers(ws, 1, timeout=0.5)
            # the dashboard's data comes from the cluster too
            base = cluster_stack.procs["stats-1"].base_url
            async with httpx.AsyncClient(base_url=base) as http:
                listed = (await http.get("/api/v1/nodes")).json()
                assert sorted(n["node_id"] for n in listed if n["alive"]) == [
                    "node-c0",
                    "node-c1",
                ]
                for _ in range(50):  # the snapshot is rebuilt every second or so
                    stats = (await http.get("/api/v1/stats")).json()
                    if sum(stats["language_pairs"].values()) >= 8:
                        break
                    await asyncio.sleep(0.2)
            assert sum(stats["language_pairs"].values()) == 8, stats["language_pairs"]
            assert stats["sessions_active"] >= 1
    await settle_idle(cluster_redis, cluster_stack.keys)

    # one cell, one slot: every key is on the master that serves the cell's hash tag
    owner = cluster.master_of(cluster_stack.keys.prefix)
    for n in cluster.live():
        client = Redis(port=n.port)
        try:
            found = await client.keys(cluster_stack.keys.prefix + "*")
        finally:
            await client.aclose()
        if n.port == owner.port:
            assert any(k.endswith(b":stats:unserved") or b":node:" in k for k in found), found
        elif await _is_master(n.port):
            assert found == [], f"keys of the cell on another master {n.port}: {found[:5]}"


async def _is_master(port: int) -> bool:
    client = Redis(port=port)
    try:
        return (await client.info("replication"))["role"] == "master"
    finally:
        await client.aclose()


async def test_a_master_failover_resumes_scheduling(
    cluster: LocalCluster, cluster_stack, cluster_redis: Redis
) -> None:
    """The master serving the cell is killed (SIGKILL) between utterances: its replica is
    promoted (cluster-node-timeout 2 s), the services follow the new topology and load the
    scripts there, and the session goes on: the utterances sent during the outage are
    answered once each, with their results, after it (a job whose ack could not be written
    during the outage is taken back and sent again: the default timeouts leave room for it)."""
    nodes = [node(cluster_stack, f"node-f{i}", Echo(), capacity=2) for i in range(2)]
    async with running(*nodes):
        ws, sid = await open_session(session_url(cluster_stack))
        async with ws:
            for i in range(3):
                await send_utterance(ws, sid, i)
            before = await answers(ws, 3)
            assert [m["type"] for m in before] == ["translation_result"] * 3, before
            regs = [
                await cluster_redis.hget(cluster_stack.keys.node(n.node_id), "reg_id")
                for n in nodes
            ]
            old = cluster.master_of(cluster_stack.keys.prefix)
            cluster.kill(old)
            t0 = asyncio.get_running_loop().time()
            for i in range(3, 6):
                await send_utterance(ws, sid, i)
            during = await answers(ws, 3, timeout=60)
            waited = asyncio.get_running_loop().time() - t0
            new = cluster.master_of(cluster_stack.keys.prefix)
            assert new.port != old.port
            print(f"failover: answered {waited:.1f}s after the kill, new master {new.port}")
            assert [m["utterance_index"] for m in during] == [3, 4, 5], during
            assert [m["type"] for m in during] == ["translation_result"] * 3, during
            for i in range(6, 8):
                await send_utterance(ws, sid, i)
            after = await answers(ws, 2)
            assert [m["type"] for m in after] == ["translation_result"] * 2, after
            with pytest.raises(TimeoutError):  # exactly once
                await answers(ws, 1, timeout=0.5)
            # the nodes rode it out: neither expired nor registered again
            again = [
                await cluster_redis.hget(cluster_stack.keys.node(n.node_id), "reg_id")
                for n in nodes
            ]
            assert again == regs and None not in regs, (regs, again)
