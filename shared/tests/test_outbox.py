"""The session outbox against a real Redis: an answer leaves Redis only once a gateway has
written it to the client (``outbox_ack``); a replayed ``job_finish`` hands back the same
deliveries; ``outbox_claim`` publishes again what stays unacknowledged; ``session_bind``
moves a session to a new connection with its outbox. And the gap rule: a hole's deadline runs
from when a later answer became ready, so consecutive holes never add up their timeouts."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import ScriptCode, Scripts
from lingua_shared.testing import node_registration

NOW = 1_700_000_000_000
GAP = 5_000
SESSION_TTL = 900_000
RETRY = 2_000


async def join(scripts: Scripts, node_id: str) -> None:
    await scripts.register_node_v2(
        **node_registration(node_id, now_ms=NOW, ttl_ms=600_000, gateway_id="gw-n")
    )
    r = await scripts.heartbeat_with_pool_assign(
        node_id=node_id, conn_id=f"c-{node_id}", gateway_id="gw-n", now_ms=NOW
    )
    assert r.alive


async def dispatch(scripts: Scripts, job_id: str, index: int) -> str:
    create = {
        "request_key": f"s1:{index}",
        "job_id": job_id,
        "now_ms": NOW,
        "ttl_ms": 600_000,
        "fields": {"session_id": "s1", "utterance_index": index},
        "audio": "QUJD",
    }
    assert (await scripts.job_create(**create)).code == 1
    r = await scripts.select_node(
        job_id=job_id, attempt=1, now_ms=NOW, lease_ms=3_000, pair_src="zh", pair_tgt="en",
        services=["asr", "semantic"], policy="pack", candidates=8, wait_until_ms=0,
        retry_ms=100,
    )  # fmt: skip
    assert r.code == 1, r
    return r.node_id


def finish_kw(job_id: str, node_id: str, now: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": 1,
        "node_id": node_id,
        "now_ms": now,
        "outcome": "done",
        "payload": {"type": "translation_result", "job_id": job_id},
        "gap_ms": GAP,
        "session_ttl_ms": SESSION_TTL,
    }


async def ordered_session(redis: Redis, keys: Keys, sid: str = "s1") -> None:
    record = {"gateway_id": "gw-s", "conn_id": "c1", "mode": "one_way"}
    await redis.hset(keys.session(sid), mapping=record)
    await redis.set(keys.gateway("gw-s"), "1")


def fail_kw(sid: str, index: int, now: int) -> dict[str, Any]:
    """An answer without a job (utterance_fail): the simplest way to make an outcome due."""
    return {
        "session_id": sid,
        "utterance_index": index,
        "now_ms": now,
        "payload": {"type": "missing_result", "utterance_index": index},
        "gap_ms": GAP,
        "session_ttl_ms": SESSION_TTL,
    }


async def outbox(redis: Redis, keys: Keys, sid: str = "s1") -> list[int]:
    return sorted(int(i) for i in await redis.hkeys(keys.session_outbox(sid)))


async def test_an_answer_stays_in_the_outbox_until_a_gateway_acks_it(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await ordered_session(redis, keys)
    d = await scripts.utterance_fail(**fail_kw("s1", 0, NOW))
    assert [i for i, _ in d.items] == [0]
    assert await outbox(redis, keys) == [0]
    assert await redis.zscore(keys.outbox, "s1") == NOW
    # not claimed before retry_ms: its gateway is writing it
    assert await scripts.outbox_claim(now_ms=NOW + RETRY - 1, retry_ms=RETRY, limit=10) == []
    # unacknowledged for retry_ms: claimed once (the claim moves its time), then again later
    (p,) = await scripts.outbox_claim(now_ms=NOW + RETRY, retry_ms=RETRY, limit=10)
    assert (p.session_id, p.gateway_id, p.conn_id) == ("s1", "gw-s", "c1")
    assert [i for i, _ in p.items] == [0]
    assert await scripts.outbox_claim(now_ms=NOW + RETRY + 1, retry_ms=RETRY, limit=10) == []
    assert len(await scripts.outbox_claim(now_ms=NOW + 2 * RETRY, retry_ms=RETRY, limit=10)) == 1
    # written to the client: gone for good, and an ack replayed changes nothing
    for _ in range(2):
        r = await scripts.outbox_ack(session_id="s1", indices=[0])
        assert (r.code, r.value) == (ScriptCode.ACKED, "0")
    assert await outbox(redis, keys) == [] and await redis.zscore(keys.outbox, "s1") is None
    assert await scripts.outbox_claim(now_ms=NOW + 9 * RETRY, retry_ms=RETRY, limit=10) == []


async def test_an_outbox_no_live_gateway_holds_waits_for_a_resume(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await ordered_session(redis, keys)
    await scripts.utterance_fail(**fail_kw("s1", 0, NOW))
    await redis.delete(keys.gateway("gw-s"))  # the gateway died
    assert await scripts.outbox_claim(now_ms=NOW + RETRY, retry_ms=RETRY, limit=10) == []
    assert await redis.zscore(keys.outbox, "s1") is None  # parked, not lost
    assert await outbox(redis, keys) == [0]
    b = await scripts.session_bind(session_id="s1", mode="resume", gateway_id="gw-2",
                                   conn_id="c2", client="", now_ms=NOW + RETRY,
                                   session_ttl_ms=SESSION_TTL)  # fmt: skip
    assert b.code == ScriptCode.RESUMED and (b.old_gateway_id, b.old_conn_id) == ("gw-s", "c1")
    assert [i for i, _ in b.outbox] == [0]
    # the new gateway replays it; unacknowledged, it is published again to the new connection
    await redis.set(keys.gateway("gw-2"), "1")
    (p,) = await scripts.outbox_claim(now_ms=NOW + 2 * RETRY, retry_ms=RETRY, limit=10)
    assert (p.gateway_id, p.conn_id) == ("gw-2", "c2")
    # the old connection's late close leaves the new binding alone
    r = await scripts.session_bind(
        session_id="s1", mode="unbind", gateway_id="gw-s", conn_id="c1", client="",
        now_ms=NOW, session_ttl_ms=SESSION_TTL,
    )  # fmt: skip
    assert r.code == ScriptCode.NOT_BOUND
    assert await redis.hget(keys.session("s1"), "conn_id") == b"c2"


async def test_a_replayed_job_finish_returns_the_same_deliveries_until_acked(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """A dispatcher that died after job_finish and before publishing: the redelivered result
    runs job_finish again, which hands back what the first run released (before: nothing,
    and the answer was lost)."""
    await ordered_session(redis, keys)
    for n in ("n1", "n2"):
        await join(scripts, n)
    n0, n1 = await dispatch(scripts, "j0", 0), await dispatch(scripts, "j1", 1)
    assert (await scripts.job_finish(**finish_kw("j1", n1, NOW + 100))).items == []  # waits
    first = await scripts.job_finish(**finish_kw("j0", n0, NOW + 200))
    assert first.code == ScriptCode.FINISHED and [i for i, _ in first.items] == [0, 1]
    again = await scripts.job_finish(**finish_kw("j0", n0, NOW + 300))
    assert again.code == ScriptCode.ALREADY_FINISHED
    assert (again.gateway_id, again.conn_id, again.items) == ("gw-s", "c1", first.items)
    # the gateway wrote 0 to the client: a replay now hands back 1 alone, then nothing
    await scripts.outbox_ack(session_id="s1", indices=[0])
    again = await scripts.job_finish(**finish_kw("j0", n0, NOW + 400))
    assert [i for i, _ in again.items] == [1]
    await scripts.outbox_ack(session_id="s1", indices=[1])
    again = await scripts.job_finish(**finish_kw("j0", n0, NOW + 500))
    assert (again.code, again.items) == (ScriptCode.ALREADY_FINISHED, [])


async def test_consecutive_holes_hold_a_ready_answer_one_gap_in_all(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Holes 0, 1, 2 before an answer to 3 ready at t: all three are answered at t + gap
    (before: one gap each, 3 x gap)."""
    await ordered_session(redis, keys)
    t = NOW + 1_000
    await scripts.utterance_fail(**fail_kw("s1", 3, t))
    assert await redis.zscore(keys.gaps, "s1") == t + GAP
    assert (await scripts.gap_expire(session_id="s1", now_ms=t + GAP - 1, gap_ms=GAP,
                                     session_ttl_ms=SESSION_TTL)).code == 0  # fmt: skip
    d = await scripts.gap_expire(session_id="s1", now_ms=t + GAP, gap_ms=GAP,
                                 session_ttl_ms=SESSION_TTL)  # fmt: skip
    assert [(i, p.get("reason")) for i, p in d.items] == [
        (0, "gap_timeout"), (1, "gap_timeout"), (2, "gap_timeout"), (3, None),
    ]  # fmt: skip
    assert await redis.zscore(keys.gaps, "s1") is None
    assert await outbox(redis, keys) == [0, 1, 2, 3]


async def test_a_hole_after_an_answered_one_keeps_the_deadline_of_what_it_holds(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Answers to 2 (ready at t) and 4 (t + 3 s): hole 0/1 expire at t + gap, hole 3 then
    holds 4, ready since t + 3 s, until t + 3 s + gap (not a fresh gap from t + gap)."""
    await ordered_session(redis, keys)
    t = NOW + 1_000
    await scripts.utterance_fail(**fail_kw("s1", 2, t))
    await scripts.utterance_fail(**fail_kw("s1", 4, t + 3_000))
    d = await scripts.gap_expire(session_id="s1", now_ms=t + GAP, gap_ms=GAP,
                                 session_ttl_ms=SESSION_TTL)  # fmt: skip
    assert [i for i, _ in d.items] == [0, 1, 2]
    assert await redis.zscore(keys.gaps, "s1") == t + 3_000 + GAP
