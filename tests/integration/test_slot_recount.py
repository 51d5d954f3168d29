"""Slots never leak, through the real node-manager: jobs whose records expire while they hold
a node's slots (the dispatcher is down longer than the job TTL: nothing handles their timers)
are recounted by the sweeper, and the node's whole capacity comes back.

The job TTL is shortened through job_create's argument (the dispatcher passes
``LINGUA_JOB_TTL_S``); the jobs are reserved as the dispatcher reserves them. Before the
recount, the node stayed full for good.
"""

from __future__ import annotations

import asyncio

import pytest

from lingua_node_agent import NodeAgent
from lingua_shared.runtime import now_ms
from lingua_shared.scripts import ScriptCode, Scripts
from tests.support.agents import agent_config, agent_task
from tests.support.helpers import eventually, node_state

pytestmark = pytest.mark.integration

NODE = "node-leak"


async def test_slots_of_jobs_that_expired_come_back_without_a_dispatcher(stack, redis) -> None:
    keys = stack.keys
    scripts = await Scripts.load(redis, keys)
    agent = NodeAgent(agent_config(stack.gateway_url(), NODE, lang_sets=[["en", "zh"]]))
    async with agent_task(agent):
        await asyncio.wait_for(agent.registered.wait(), 10)
        capacity = int((await node_state(redis, keys, NODE))["capacity"])
        for i in range(capacity):
            job_id = f"j-leak-{i}"
            created = await scripts.job_create(
                request_key=f"s-leak:{i}", job_id=job_id, now_ms=now_ms(), ttl_ms=1_500,
                fields={"session_id": "s-leak", "utterance_index": i}, audio="QUJD",
            )  # fmt: skip
            assert created.code == ScriptCode.JOB_CREATED
            sel = await scripts.select_node(
                job_id=job_id, attempt=1, now_ms=now_ms(), lease_ms=60_000, pair_src="zh",
                pair_tgt="en", services=["asr", "semantic"], policy="pack", candidates=8,
                wait_until_ms=0, retry_ms=100, deadline_ms=60_000,
            )  # fmt: skip
            assert sel.node_id == NODE
        assert await _used(redis, keys) == capacity  # full

        # no dispatcher: the timers never fire; the records expire with the slots still held
        await eventually(
            lambda: _expired(redis, keys, capacity), timeout=10, what="the job records to expire"
        )
        # the sweeper's recount gives every slot back (generous bound: many sweep intervals)
        await eventually(lambda: _free(redis, keys), timeout=10, what="capacity back")
        assert await redis.smembers(keys.node_jobs(NODE)) == set()
        state = await node_state(redis, keys, NODE)
        assert (state["connected"], state["reserved"], state["running"]) == ("1", "0", "0")
        agent.stop(drain=True)


async def _used(redis, keys) -> int:
    reserved, running = await redis.hmget(keys.node(NODE), "reserved", "running")
    return int(reserved) + int(running)


async def _expired(redis, keys, n: int) -> bool:
    return not await redis.exists(*(keys.job(f"j-leak-{i}") for i in range(n)))


async def _free(redis, keys) -> bool:
    return await _used(redis, keys) == 0
