"""Connection fencing on every write (heartbeat, register, drop, node lost) on a real Redis.

The scenario: node X registers on connection A and gets a job; X registers again on B (A is
replaced); a heartbeat of A arrives late; then A's drop is reported, to node-manager
(``node_offline dropped``) and to the dispatcher (``node_lost``). X must stay connected on B,
schedulable, with its job running: before fencing, the late beat made A current again, so the
drop marked X disconnected and the dispatcher took its running job back while B was alive.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.scripts import ScriptCode, Scripts
from lingua_shared.testing import key_snapshot, node_beat, node_registration

NOW = 1_700_000_000_000
TTL = 30_000
SHARD = "en_zh:eu:a100:0"


def reg(conn: str, now: int = NOW, **over: Any) -> dict[str, Any]:
    return node_registration(
        "x", **{"now_ms": now, "ttl_ms": TTL, "conn_id": conn, "gateway_id": f"gw-{conn}", **over}
    )


def beat(conn: str, now: int) -> dict[str, Any]:
    return node_beat("x", now_ms=now, conn_id=conn, gateway_id=f"gw-{conn}")


async def give_job(scripts: Scripts, job_id: str, index: int = 0) -> None:
    fields = {"session_id": "s1", "utterance_index": index}
    assert (
        await scripts.job_create(
            request_key=f"s1:{index}", job_id=job_id, now_ms=NOW, ttl_ms=600_000,
            fields=fields, audio="QUJD",
        )
    ).code == ScriptCode.JOB_CREATED  # fmt: skip
    sel = await scripts.select_node(
        job_id=job_id, attempt=1, now_ms=NOW, lease_ms=3_000, pair_src="zh", pair_tgt="en",
        services=["asr", "semantic"], policy="pack", candidates=8, wait_until_ms=0,
        retry_ms=100, deadline_ms=30_000,
    )  # fmt: skip
    assert (sel.code, sel.node_id) == (ScriptCode.RESERVED, "x")


async def record(redis: Redis, keys: Keys) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.node("x"))).items()}


async def test_late_beat_and_drop_of_a_replaced_connection_change_nothing(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    # X on A (a node that never acks: its job runs from the assignment)
    assert (await scripts.register_node_v2(**reg("A", acks=False))).code == ScriptCode.CREATED
    assert (await scripts.heartbeat_with_pool_assign(**beat("A", NOW))).alive
    await give_job(scripts, "j1")
    # X registers again on B: A is replaced
    again = await scripts.register_node_v2(**reg("B", now=NOW + 1_000, acks=False))
    assert (again.code, again.replaced_conn_id) == (ScriptCode.REFRESHED, "A")
    assert (await scripts.heartbeat_with_pool_assign(**beat("B", NOW + 1_000))).alive

    # a heartbeat of A arrives late: stale, nothing written
    before = await key_snapshot(redis)
    late = await scripts.heartbeat_with_pool_assign(**beat("A", NOW + 2_000))
    assert late.code == ScriptCode.STALE
    assert await key_snapshot(redis) == before

    # then A's drop, as node-manager and the dispatcher see it
    off = await scripts.node_offline(node_id="x", mode="dropped", conn_id="A", now_ms=NOW + 3_000)
    assert off.code == ScriptCode.STALE_CONN
    lost = await scripts.node_lost(node_id="x", conn_id="A", now_ms=NOW + 3_000, max_attempts=3)
    assert (lost.code, lost.conn_id, lost.jobs) == (ScriptCode.NEWER_CONNECTION, "B", [])
    assert await key_snapshot(redis) == before

    # X is connected on B, schedulable, its job still running there
    rec = await record(redis, keys)
    assert (rec["connected"], rec["conn_id"], rec["gateway_id"]) == ("1", "B", "gw-B")
    assert (rec["running"], rec["reserved"]) == ("1", "0")
    assert await redis.zscore(keys.pool(SHARD), "x") == 0.25
    job = await redis.hmget(keys.job("j1"), "state", "attempt", "node_id")
    assert [v.decode() for v in job] == ["acked", "1", "x"]
    assert await redis.smembers(keys.node_jobs("x")) == {b"j1"}


async def test_a_late_registration_of_a_replaced_connection_is_refused(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    await scripts.register_node_v2(**reg("A"))
    await scripts.register_node_v2(**reg("B", now=NOW + 1_000))
    before = await key_snapshot(redis)
    stale = await scripts.register_node_v2(**reg("A", now=NOW + 2_000))
    assert (stale.code, stale.created, stale.replaced_conn_id) == (
        ScriptCode.CONN_REPLACED,
        False,
        "",
    )
    assert await key_snapshot(redis) == before
    assert (await record(redis, keys))["conn_id"] == "B"


async def test_a_new_connection_still_adopts_the_node_by_heartbeat(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    """N6: a node back on a fresh connection C resumes with a beat, without registering;
    then the old connection B is the replaced one."""
    await scripts.register_node_v2(**reg("B"))
    await scripts.heartbeat_with_pool_assign(**beat("B", NOW))
    await scripts.node_offline(node_id="x", mode="dropped", conn_id="B", now_ms=NOW + 500)
    assert (await scripts.heartbeat_with_pool_assign(**beat("C", NOW + 1_000))).alive
    rec = await record(redis, keys)
    assert (rec["connected"], rec["conn_id"]) == ("1", "C")
    assert (await scripts.heartbeat_with_pool_assign(**beat("B", NOW + 2_000))).code == (
        ScriptCode.STALE
    )
    # a live connection replaced by a beat on another one (its gateway died unseen) as well
    assert (await scripts.heartbeat_with_pool_assign(**beat("D", NOW + 3_000))).alive
    assert (await scripts.heartbeat_with_pool_assign(**beat("C", NOW + 4_000))).code == (
        ScriptCode.STALE
    )
    assert (await record(redis, keys))["conn_id"] == "D"


async def test_a_late_beat_of_an_ended_connection_does_not_take_the_node_back(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    """Beats and events travel on separate queues: A's last beat can reach node-manager after
    A's close removed the record and after B registered the node again. With the record went
    its list of replaced connections, and the beat adopted the node for a connection that no
    longer exists (B's beats were then the stale ones)."""
    assert (await scripts.register_node_v2(**reg("A"))).code == ScriptCode.CREATED
    assert (await scripts.heartbeat_with_pool_assign(**beat("A", NOW))).alive
    off = await scripts.node_offline(node_id="x", mode="graceful", conn_id="A", now_ms=NOW + 100)
    assert off.code == ScriptCode.OFFLINE
    assert not await redis.exists(keys.node("x"))
    assert (await scripts.register_node_v2(**reg("B", now=NOW + 200))).code == ScriptCode.CREATED
    assert (await scripts.heartbeat_with_pool_assign(**beat("B", NOW + 300))).alive

    before = await key_snapshot(redis)
    late = await scripts.heartbeat_with_pool_assign(**beat("A", NOW + 400))
    assert late.code == ScriptCode.STALE
    stale = await scripts.register_node_v2(**reg("A", now=NOW + 500))
    assert stale.code == ScriptCode.CONN_REPLACED
    assert await key_snapshot(redis) == before
    assert (await scripts.heartbeat_with_pool_assign(**beat("B", NOW + 600))).alive
    assert (await record(redis, keys))["conn_id"] == "B"


async def test_an_ended_connection_cannot_register_after_its_close_was_applied(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    """A node that closes while its registration is still on the bus: the close is applied
    first (nothing to remove), and the registration that follows must not bring back a node
    on a connection that is gone (its record would stay schedulable for a whole TTL)."""
    off = await scripts.node_offline(node_id="x", mode="graceful", conn_id="A", now_ms=NOW)
    assert off.code == ScriptCode.ALREADY_GONE
    assert (await scripts.register_node_v2(**reg("A", now=NOW + 100))).code == (
        ScriptCode.CONN_REPLACED
    )
    assert not await redis.exists(keys.node("x"))
    # the node on its next connection registers as usual, and its record keeps the fence
    assert (await scripts.register_node_v2(**reg("B", now=NOW + 200))).code == ScriptCode.CREATED
    assert not await redis.exists(keys.node_retired("x"))
    assert (await scripts.heartbeat_with_pool_assign(**beat("A", NOW + 300))).code == (
        ScriptCode.STALE
    )


async def test_an_expired_record_keeps_the_fence_of_its_dropped_connection(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    """A dropped connection's record expires and goes; a beat of that connection still in
    transit must not adopt the node from the connection that registers next. A connection
    still open when its record expired is not fenced: its next beat is told to register."""
    await scripts.register_node_v2(**reg("A"))
    await scripts.register_node_v2(**reg("B", now=NOW + 10))
    await scripts.node_offline(node_id="x", mode="dropped", conn_id="B", now_ms=NOW + 20)
    gone = await scripts.node_offline(node_id="x", mode="expired", now_ms=NOW + TTL + 1_000)
    assert gone.code == ScriptCode.OFFLINE
    assert (await scripts.register_node_v2(**reg("C", now=NOW + TTL + 2_000))).code == (
        ScriptCode.CREATED
    )
    for late in ("A", "B"):
        reply = await scripts.heartbeat_with_pool_assign(**beat(late, NOW + TTL + 3_000))
        assert reply.code == ScriptCode.STALE, late
    assert (await record(redis, keys))["conn_id"] == "C"

    # C was connected when its record expired: its beat asks for a registration, which works
    gone = await scripts.node_offline(node_id="x", mode="expired", now_ms=NOW + 3 * TTL)
    assert gone.code == ScriptCode.OFFLINE
    reply = await scripts.heartbeat_with_pool_assign(**beat("C", NOW + 3 * TTL + 100))
    assert reply.code == ScriptCode.NOT_REGISTERED
    again = await scripts.register_node_v2(**reg("C", now=NOW + 3 * TTL + 200))
    assert again.code == ScriptCode.CREATED


async def test_node_lost_takes_every_job_back_in_one_call_and_a_replay_takes_none(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    await scripts.register_node_v2(**reg("A"))
    await scripts.heartbeat_with_pool_assign(**beat("A", NOW))
    await give_job(scripts, "j1", 0)
    await give_job(scripts, "j2", 1)
    # j2 is on its last attempt already
    await redis.hset(keys.job("j2"), "attempt", 3)
    lost = await scripts.node_lost(node_id="x", conn_id="A", now_ms=NOW + 500, max_attempts=3)
    assert lost.code == ScriptCode.JOBS_TAKEN
    assert sorted((t.job_id, t.code, t.attempt) for t in lost.jobs) == [
        ("j1", ScriptCode.RELEASED, 2),
        ("j2", ScriptCode.EXHAUSTED, 3),
    ]
    states = [await redis.hget(keys.job(j), "state") for j in ("j1", "j2")]
    assert states == [b"queued", b"exhausted"]
    rec = await record(redis, keys)
    assert (rec["reserved"], rec["running"]) == ("0", "0")
    assert not await redis.exists(keys.node_jobs("x"))
    # both keep a rescue timer: dispatched again, or failed, if the caller dies now
    assert await redis.zscore(keys.timers, "j1") == NOW + 1_500
    assert await redis.zscore(keys.timers, "j2") == NOW + 1_500
    before = await key_snapshot(redis)
    again = await scripts.node_lost(node_id="x", conn_id="A", now_ms=NOW + 600, max_attempts=3)
    assert (again.code, again.jobs) == (ScriptCode.JOBS_TAKEN, [])
    assert await key_snapshot(redis) == before


async def test_node_lost_rejects_bad_input_writing_nothing(redis: Redis, scripts: Scripts) -> None:
    await scripts.register_node_v2(**reg("A"))
    before = await key_snapshot(redis)
    for bad in ({"conn_id": ""}, {"max_attempts": 0}, {"node_id": "no such id!"}):
        kw = {"node_id": "x", "conn_id": "A", "now_ms": NOW, "max_attempts": 3, **bad}
        with pytest.raises(ScriptRejected):
            await scripts.node_lost(**kw)
    assert await key_snapshot(redis) == before
