"""The stack on a Redis Cluster (``LINGUA_REDIS_CLUSTER=true``): a local cluster of three
masters with two replicas each (real ``redis-server`` processes, started and stopped here),
every service replicated as in the job-path tests and waiting for a replica on every script
call (``LINGUA_REDIS_WAIT_REPLICAS=1``), and a session's utterances answered in order,
exactly once, also across a failover. Every key the scheduler wrote is on the master of the
cell's slot. And what WAIT bounds: the writes a failover can lose."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from lingua_node_agent import JobContext, JobOutcome
from lingua_shared.devcluster import LocalCluster
from lingua_shared.keys import Keys
from lingua_shared.protocol import JobAssign
from lingua_shared.scripts import Durability, ReplicasBehind, ScriptCode, Scripts, find_lua_dir
from lingua_shared.testing import redis_for_tests
from tests.support.agents import node, running
from tests.support.clusters import local_cluster
from tests.support.invariants import settle_idle
from tests.support.sessions import answers, open_session, send_utterance, session_url
from tests.support.stack import CELL, JOB_ENV, JOB_SERVICES, started_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # two replicas a master: with WAIT on, a promoted replica still has one to confirm to
    with local_cluster(tmp_path_factory.mktemp("redis-cluster"), replicas=2) as c:
        yield c


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
        # every script call acknowledged only once a replica holds its writes
        "LINGUA_REDIS_WAIT_REPLICAS": "1",
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


async def translated(ws: Any, sid: str, indexes: range, timeout: float = 15) -> list[dict]:
    """Send these utterances; each is answered with its result, in order."""
    for i in indexes:
        await send_utterance(ws, sid, i)
    got = await answers(ws, len(indexes), timeout=timeout)
    assert [(m["type"], m["utterance_index"]) for m in got] == [
        ("translation_result", i) for i in indexes
    ], got
    return got


async def test_the_job_path_runs_on_a_redis_cluster(
    cluster: LocalCluster, cluster_stack, cluster_redis: Redis
) -> None:
    nodes = [node(cluster_stack, f"node-c{i}", Echo(), capacity=2) for i in range(2)]
    async with running(*nodes):
        ws, sid = await open_session(session_url(cluster_stack))
        async with ws:
            got = await translated(ws, sid, range(8))
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
            await translated(ws, sid, range(3))
            regs = [
                await cluster_redis.hget(cluster_stack.keys.node(n.node_id), "reg_id")
                for n in nodes
            ]
            old = cluster.master_of(cluster_stack.keys.prefix)
            cluster.kill(old)
            t0 = asyncio.get_running_loop().time()
            await translated(ws, sid, range(3, 6), timeout=60)
            waited = asyncio.get_running_loop().time() - t0
            new = cluster.master_of(cluster_stack.keys.prefix)
            assert new.port != old.port
            print(f"failover: answered {waited:.1f}s after the kill, new master {new.port}")
            await translated(ws, sid, range(6, 8))
            with pytest.raises(TimeoutError):  # exactly once
                await answers(ws, 1, timeout=0.5)
            # the nodes rode it out: neither expired nor registered again
            again = [
                await cluster_redis.hget(cluster_stack.keys.node(n.node_id), "reg_id")
                for n in nodes
            ]
            assert again == regs and None not in regs, (regs, again)


def job_args(job_id: str) -> dict[str, Any]:
    return {
        "request_key": f"s1:{job_id}",
        "job_id": job_id,
        "now_ms": 1_700_000_000_000,
        "ttl_ms": 600_000,
        "fields": {"session_id": "s1", "utterance_index": 0},
        "audio": "QUJD",
    }


async def test_wait_bounds_what_a_failover_loses(tmp_path: Path) -> None:
    """Redis replicates asynchronously: a write the master acknowledged and had not yet sent
    to its replica is gone after a failover to that replica. With a Durability (WAIT 1), a
    script call is answered only once the replica holds its writes, so what a failover loses
    was never acknowledged. Shown with the replica paused (SIGSTOP), its link cut and the
    master killed: the call without WAIT is acknowledged and lost, the call with WAIT fails
    (to be retried) instead of being acknowledged, and what was confirmed before survives."""
    c = LocalCluster(tmp_path / "cluster").start()
    try:
        keys = Keys("bound")
        client = redis_for_tests(c.url, cluster=True)
        plain = await Scripts.load(client, keys)
        waiting = Scripts(client, keys, find_lua_dir(), Durability(1, 2_000))
        assert (await waiting.job_create(**job_args("j0"))).code == ScriptCode.JOB_CREATED
        master = c.master_of(keys.prefix)
        replica = c.replica_of(master)
        os.kill(replica.pid, signal.SIGSTOP)
        # and its link cut, so that what follows stays on the master (a paused replica's
        # socket would still take the stream into its kernel buffer)
        killed = await client.execute_command(  # type: ignore[attr-defined]
            "CLIENT KILL", "TYPE", "replica", target_nodes=client.get_node_from_key(keys.prefix)
        )
        assert killed
        try:
            with pytest.raises(ReplicasBehind):
                await waiting.job_create(**job_args("j1"))
            assert (await plain.job_create(**job_args("j2"))).code == ScriptCode.JOB_CREATED
            c.kill(master)
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        await asyncio.to_thread(c.wait_ok, 30)
        assert c.master_of(keys.prefix).port == replica.port
        await client.aclose()

        after = redis_for_tests(f"redis://127.0.0.1:{replica.port}/0", cluster=True)
        try:
            found = {j: await after.exists(keys.job(j)) for j in ("j0", "j1", "j2")}
            # j0 confirmed: kept; j2 acknowledged without WAIT: lost; j1 never acknowledged
            assert found == {"j0": 1, "j1": 0, "j2": 0}, found
            # the caller of j1 retries (a bus delivery is retried in place): now it is kept
            again = Scripts(after, keys, find_lua_dir(), Durability(1, 2_000))
            with pytest.raises(ReplicasBehind):  # no replica left behind the new master
                await again.job_create(**job_args("j1"))
        finally:
            await after.aclose()
    finally:
        c.stop()
