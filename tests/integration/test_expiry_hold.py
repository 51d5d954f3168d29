"""Expiry waits for the heartbeats in transit (real processes): a gateway whose beats stop
reaching node-manager for three node TTLs (its process paused, as a starved host pauses it)
loses none of its nodes, while a node that really stopped beating still expires.

Judged by the clock, each of these nodes (1 s TTL, beats every 200 ms) would expire during
the pause, be told to register again once the beats resume, and register twice.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from tests.support.agents import agent, running
from tests.support.helpers import eventually, metric, node_pools, node_state, register_frame
from tests.support.stack import Stack, start_all, started_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(redis, stack_env, tmp_path, request) -> Iterator[Stack]:
    """node-manager and one gateway whose liveness key outlives a pause of a few seconds (a
    paused replica is alive, only slow)."""
    env = {**stack_env, "LINGUA_GATEWAY_LIVENESS_TTL_MS": "10000"}
    with started_stack(env, tmp_path, request) as s:
        start_all(s, ("nm-1", "node-manager"), ("gw-a", "gateway"))
        yield s


async def test_a_paused_gateway_loses_none_of_its_nodes_and_a_silent_node_expires(
    stack, redis
) -> None:
    keys = stack.keys
    url = stack.gateway_url("gw-a")
    beating = [agent([url], f"node-h{i}") for i in range(3)]
    async with running(*beating), connect(url) as silent:
        # registers (announcing 200 ms beats: a 1 s TTL), then never beats: it must expire
        await silent.send(register_frame("node-silent"))
        assert json.loads(await silent.recv())["type"] == "node_register_ack"
        for node_id in [*(a.node_id for a in beating), "node-silent"]:
            await eventually(lambda n=node_id: node_pools(redis, keys, n), what="pools")
        gw = stack.procs["gw-a"]
        gw.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(3.0)  # three TTLs: every deadline passes by the clock
            assert await redis.exists(keys.node("node-h0")), "expired while its beats waited"
        finally:
            gw.signal(signal.SIGCONT)
        t_resumed = time.monotonic()

        async def silent_gone() -> bool:
            return not await redis.exists(keys.node("node-silent"))

        await eventually(silent_gone, timeout=10, what="the silent node to expire")
        # once the gateway's beats are applied past its deadline: within a few sweeps
        assert time.monotonic() - t_resumed < 5
        await asyncio.sleep(1.5)  # beats flow again, well past the TTL
        for a in beating:
            assert a.registrations == 1, (a.node_id, a.registrations)
            state = await node_state(redis, keys, a.node_id)
            assert state.get("connected") == "1", (a.node_id, state)
            assert await node_pools(redis, keys, a.node_id)
    assert metric(stack, "nm-1", "lingua_nodes_swept_total") == 1  # the silent node only
