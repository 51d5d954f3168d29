"""The whole node lifecycle through the real gateway and node-manager processes, real
RabbitMQ and Redis, with real WebSocket node agents: register -> heartbeats -> pools ->
abnormal drop and reconnect (pools kept) -> graceful offline (pools gone at once) -> silent
death and TTL expiry (pools cleaned) -> a Redis flush (told to re-register, and back)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from websockets.asyncio.client import connect

from lingua_node_agent import NodeAgent
from lingua_shared.runtime import now_ms
from lingua_shared.settings import NODE_RECORD_GRACE_MS
from tests.support.agents import agent_config, agent_task
from tests.support.helpers import (
    eventually,
    metric,
    node_pools,
    node_state,
    register_frame,
    scores,
)

pytestmark = pytest.mark.integration


LANG_SETS = [["en", "ja", "zh"], ["en", "zh"]]  # two pools per node


async def test_register_heartbeat_pools_drop_reconnect_and_goodbye(stack, redis):
    keys = stack.keys
    agent = NodeAgent(agent_config(stack.gateway_url(), "node-life-1", lang_sets=LANG_SETS))
    async with agent_task(agent) as task:
        await asyncio.wait_for(agent.registered.wait(), 10)
        want_pools = {"en_ja_zh:eu:a100:0", "en_zh:eu:a100:0"}
        await eventually(
            lambda: _pools_are(redis, keys, "node-life-1", want_pools), what="pool assignment"
        )
        state = await node_state(redis, keys, "node-life-1")
        assert state["gateway_id"] == "gw-a" and state["connected"] == "1"
        # its 1 s TTL: the record outlives the logical expiry by the sweeper's grace
        assert 0 < int(await redis.pttl(keys.node("node-life-1"))) <= 1000 + NODE_RECORD_GRACE_MS
        assert int(await redis.zscore(keys.nodes_expiry, "node-life-1")) <= now_ms() + 1000
        registered_at = state["registered_at"]
        # heartbeats keep it alive well past its 1 s TTL
        first_beat = int(state["last_heartbeat_ts"])
        await asyncio.sleep(1.5)
        state = await node_state(redis, keys, "node-life-1")
        assert int(state["last_heartbeat_ts"]) > first_beat + 1000
        assert state["registered_at"] == registered_at
        assert all(
            s is not None and s < 1 for s in (await scores(redis, keys, "node-life-1")).values()
        )

        # abnormal drop: the TCP connection dies without a close frame
        assert agent._ws is not None
        agent._ws.transport.abort()
        await eventually(lambda: _dropped_events(stack), what="the drop to be processed")
        await eventually(lambda: _reconnected(agent), what="the agent to reconnect")
        await eventually(lambda: _schedulable(redis, keys, "node-life-1"), what="back schedulable")
        state = await node_state(redis, keys, "node-life-1")
        assert state["registered_at"] == registered_at, "the node was re-created, not resumed"
        assert await node_pools(redis, keys, "node-life-1") == want_pools

        # graceful offline: SIGTERM-like drain -> close 1000 -> pools gone at once
        agent.stop(drain=True)
        await asyncio.wait_for(task, 10)
        assert agent.last_close_code == 1000
        await eventually(
            lambda: _gone(redis, keys, "node-life-1"),
            timeout=2,
            what="graceful removal (well before the TTL sweep would)",
        )
        assert await redis.smembers(keys.pools_index) == set()
        assert await redis.smembers(keys.pair("zh", "en")) == set()


async def test_dropped_node_keeps_its_pools_for_the_grace_and_resumes_with_a_heartbeat(
    stack, redis
):
    keys = stack.keys
    ws = await connect(stack.gateway_url())
    await ws.send(register_frame("node-grace", heartbeat_interval_ms=1000))  # TTL 3 s
    ack = json.loads(await ws.recv())
    assert ack["node_id"] == "node-grace"
    pools = await node_pools(redis, keys, "node-grace")
    assert pools == {"en_ja_zh:eu:a100:0"}
    ws.transport.abort()
    await eventually(lambda: _connected_is(redis, keys, "node-grace", "0"), what="marked dropped")
    # within the grace: record and pools kept, but not offered jobs (score out of range)
    assert await node_pools(redis, keys, "node-grace") == pools
    assert all(s >= 1000 for s in (await scores(redis, keys, "node-grace")).values())
    assert await redis.zscore(keys.nodes_connected, "node-grace") is None
    # a new connection resumes the node with a heartbeat, no registration
    async with connect(stack.gateway_url()) as ws2:
        await ws2.send(
            json.dumps(
                {
                    "type": "node_heartbeat",
                    "node_id": "node-grace",
                    "resource_usage": {"cpu_percent": 5, "running_jobs": 0},
                }
            )
        )
        await eventually(lambda: _schedulable(redis, keys, "node-grace"), what="resumed")
        assert await node_pools(redis, keys, "node-grace") == pools


async def test_silent_death_expires_and_the_sweeper_cleans_the_pools(stack, redis, tmp_path):
    keys = stack.keys
    with open(tmp_path / "agent.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lingua_node_agent",
                "run",
                "--gateway",
                stack.gateway_url(),
                "--node-id",
                "node-silent",
                "--lang-sets",
                "en,zh",
                "--region",
                "us",
                "--gpu-tier",
                "t4",
                "--heartbeat-interval-ms",
                "200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=os.environ.copy(),
        )
    try:
        await eventually(
            lambda: _pools_are(redis, keys, "node-silent", {"en_zh:us:t4:0"}), what="registration"
        )
        proc.send_signal(signal.SIGSTOP)  # no heartbeats, no close frame, socket still open
        await eventually(
            lambda: _gone(redis, keys, "node-silent"),
            timeout=8,
            what="expiry and sweep of a silent node",
        )
        assert await redis.exists(keys.pool("en_zh:us:t4:0")) == 0
        assert await redis.zscore(keys.nodes_expiry, "node-silent") is None
        assert metric(stack, "nm-1", "lingua_nodes_swept_total") >= 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)


async def test_redis_flush_makes_nodes_reregister(stack, redis):
    keys = stack.keys
    agents = [
        NodeAgent(agent_config(stack.gateway_url(), f"node-flush-{i}", lang_sets=LANG_SETS))
        for i in range(3)
    ]
    async with contextlib.AsyncExitStack() as es:
        for a in agents:
            await es.enter_async_context(agent_task(a))
        for a in agents:
            await asyncio.wait_for(a.registered.wait(), 10)
        await eventually(
            lambda: _all_schedulable(redis, keys, [a.node_id for a in agents]),
            what="all registered",
        )
        registrations = [a.registrations for a in agents]
        await redis.flushdb()
        await eventually(
            lambda: _all_schedulable(redis, keys, [a.node_id for a in agents]),
            timeout=10,
            what="every node back after the flush",
        )
        assert [a.registrations for a in agents] > registrations
        assert all(a.registrations == r + 1 for a, r in zip(agents, registrations, strict=True))
        assert metric(stack, "nm-1", "lingua_reregister_requests_total") >= 3
        for a in agents:
            assert await node_pools(redis, keys, a.node_id) == {
                "en_ja_zh:eu:a100:0",
                "en_zh:eu:a100:0",
            }


async def test_a_node_beating_unregistered_is_asked_to_reregister_once_per_window(stack, redis):
    """Every beat of a node Redis does not know comes back "not registered"; node-manager asks
    the connection to re-register once per LINGUA_REREGISTER_INTERVAL_MS (5 s), not once per
    beat, so a mass expiry never becomes a registration storm."""
    window_s = 5.0
    controls: list[dict] = []
    async with connect(stack.gateway_url()) as ws:

        async def read() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") == "node_control":
                    controls.append(msg)

        reader = asyncio.create_task(read())
        beat = json.dumps({"type": "node_heartbeat", "node_id": "node-unknown"})
        started = asyncio.get_running_loop().time()

        async def beat_until_suppressed() -> bool:
            await ws.send(beat)  # one beat per 150 ms: several coalescing windows of 50 ms
            return metric(stack, "nm-1", "lingua_reregister_suppressed_total") >= 3

        await eventually(beat_until_suppressed, interval=0.15, what="repeated beats suppressed")
        await eventually(lambda: _value(len(controls)), what="the one reregister request")
        elapsed = asyncio.get_running_loop().time() - started
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert all(c["command"] == "reregister" for c in controls), controls
    assert 1 <= len(controls) <= 1 + int(elapsed / window_s), (len(controls), elapsed)
    assert metric(stack, "nm-1", "lingua_reregister_requests_total") == len(controls)


async def _value(v):
    return v


async def test_every_service_reports_health_readiness_and_metrics(stack):
    for name, p in stack.procs.items():
        for path in ("/healthz", "/readyz", "/metrics"):
            with urllib.request.urlopen(p.base_url + path, timeout=2) as r:
                assert r.status == 200, (name, path)
                body = r.read().decode()
            if path == "/readyz":
                assert json.loads(body)["ready"] is True
            if path == "/metrics":
                assert "lingua_" in body


async def _pools_are(redis, keys, node_id, want):
    return await node_pools(redis, keys, node_id) == want


async def _gone(redis, keys, node_id):
    return (
        not await redis.exists(keys.node(node_id))
        and not await node_pools(redis, keys, node_id)
        and node_id.encode() not in await redis.smembers(keys.nodes_all)
    )


async def _connected_is(redis, keys, node_id, value):
    return (await node_state(redis, keys, node_id)).get("connected") == value


async def _schedulable(redis, keys, node_id):
    st = await node_state(redis, keys, node_id)
    sc = await scores(redis, keys, node_id)
    return st.get("connected") == "1" and sc and all(s is not None and s < 1 for s in sc.values())


async def _all_schedulable(redis, keys, ids):
    return all([await _schedulable(redis, keys, i) for i in ids])


async def _reconnected(agent):
    return agent.reconnects >= 1 and agent.registered.is_set()


async def _dropped_events(stack):
    """How many drops node-manager applied (0 is falsy: keep polling)."""
    return metric(
        stack, "nm-1", "lingua_node_events_total", kind="node.disconnected", outcome="dropped_done"
    )
