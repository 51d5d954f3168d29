"""Slots never leak (item: a job record that expires while it holds a slot): the counts are
recomputed from the node's live jobs by ``slots_reconcile`` (the sweeper's recount), on a real
Redis with job records that really expire (a short TTL through job_create's ARGV).

Before the recount, a node whose jobs expired with the dispatcher down kept them in
``reserved`` / ``running`` for good: nothing ever took those slots back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.scripts import ScriptCode, Scripts
from lingua_shared.testing import key_snapshot, node_beat, node_registration

NOW = 1_700_000_000_000
SHARD = "en_zh:eu:a100:0"
DE_FR = ("de", "fr")


async def join(scripts: Scripts, node_id: str, **over: Any) -> None:
    await scripts.register_node_v2(
        **node_registration(node_id, now_ms=NOW, ttl_ms=600_000, capacity=2, **over)
    )
    conn = over.get("conn_id", f"c-{node_id}")
    beat = node_beat(node_id, now_ms=NOW, conn_id=conn)
    assert (await scripts.heartbeat_with_pool_assign(**beat)).alive


async def give_job(
    scripts: Scripts, job_id: str, index: int, ttl_ms: int, pair: tuple[str, str] = ("zh", "en")
) -> str:
    fields = {"session_id": "s1", "utterance_index": index}
    created = await scripts.job_create(
        request_key=f"s1:{index}", job_id=job_id, now_ms=NOW, ttl_ms=ttl_ms, fields=fields,
        audio="QUJD",
    )  # fmt: skip
    assert created.code == ScriptCode.JOB_CREATED
    sel = await scripts.select_node(
        job_id=job_id, attempt=1, now_ms=NOW, lease_ms=3_000, pair_src=pair[0], pair_tgt=pair[1],
        services=["asr", "semantic"], policy="pack", candidates=8, wait_until_ms=0,
        retry_ms=100, deadline_ms=30_000,
    )  # fmt: skip
    assert sel.code == ScriptCode.RESERVED
    return sel.node_id


async def counts(redis: Redis, keys: Keys, node_id: str) -> tuple[int, int]:
    """(reserved, running)"""
    reserved, running = await redis.hmget(keys.node(node_id), "reserved", "running")
    return int(reserved), int(running)


async def test_slots_of_expired_jobs_come_back_at_the_recount(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    await join(scripts, "a")  # acks: its jobs are reservations
    await join(scripts, "b", lang_sets=[["de", "fr"]], acks=False)  # its jobs run at once
    assert await give_job(scripts, "j1", 0, ttl_ms=200) == "a"
    assert await give_job(scripts, "j2", 1, ttl_ms=200) == "a"  # a is full now
    assert await give_job(scripts, "j3", 2, ttl_ms=200, pair=DE_FR) == "b"
    assert await give_job(scripts, "j4", 3, ttl_ms=600_000, pair=DE_FR) == "b"  # a live job
    assert await counts(redis, keys, "a") == (2, 0)
    assert await counts(redis, keys, "b") == (0, 2)

    # the dispatcher is down: nothing handles the timers, the records expire
    await asyncio.sleep(0.4)
    assert not await redis.exists(keys.job("j1"), keys.job("j2"), keys.job("j3"))
    assert await counts(redis, keys, "a") == (2, 0)  # the leak: nothing recomputes them
    assert await redis.zscore(keys.pool(SHARD), "a") == 1.0  # a looks full for good

    res = await scripts.slots_reconcile(node_ids=["a", "b", "gone"])
    assert (res.code, res.fixed, res.dropped) == (ScriptCode.RECOUNTED, 2, 3)
    assert await counts(redis, keys, "a") == (0, 0)
    assert await counts(redis, keys, "b") == (0, 1)
    assert await redis.zscore(keys.pool(SHARD), "a") == 0.0
    assert await redis.zscore(keys.pool("de_fr:eu:a100:0"), "b") == 0.5
    assert await redis.smembers(keys.node_jobs("a")) == set()
    assert await redis.smembers(keys.node_jobs("b")) == {b"j4"}

    # capacity is fully back: a takes two new jobs again
    assert await give_job(scripts, "j5", 4, ttl_ms=600_000) == "a"
    assert await give_job(scripts, "j6", 5, ttl_ms=600_000) == "a"

    # replay-safe: counts already right, nothing written
    before = await key_snapshot(redis)
    again = await scripts.slots_reconcile(node_ids=["a", "b"])
    assert (again.fixed, again.dropped) == (0, 0)
    assert await key_snapshot(redis) == before


async def test_recount_leaves_the_jobs_of_an_earlier_registration_uncounted(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    """A node that left and registered again starts from zero: a job its earlier registration
    granted is still its lease in the set (job_release frees it) but holds no slot."""
    await join(scripts, "a")
    await give_job(scripts, "j1", 0, ttl_ms=600_000)
    await scripts.node_offline(node_id="a", mode="graceful", conn_id="", now_ms=NOW + 1)
    await join(scripts, "a", conn_id="c-new")
    assert await counts(redis, keys, "a") == (0, 0)
    res = await scripts.slots_reconcile(node_ids=["a"])
    assert (res.fixed, res.dropped) == (0, 0)
    assert await counts(redis, keys, "a") == (0, 0)


async def test_recount_rejects_bad_input_writing_nothing(redis: Redis, scripts: Scripts) -> None:
    await join(scripts, "a")
    before = await key_snapshot(redis)
    for bad in ([], ["ok", "not an id!"], [f"n{i}" for i in range(501)]):
        with pytest.raises(ScriptRejected):
            await scripts.slots_reconcile(node_ids=bad)
    assert await key_snapshot(redis) == before
