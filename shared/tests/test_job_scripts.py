"""The job-path scripts against a real Redis: create, ack, finish, release, gaps, timers,
cool-downs (J2, J5, J6, J7), and a stateful model of the whole slot accounting (S1).

Each test asserts the reply and the keys; "nothing written" is checked with a snapshot of
every key of the test cell (value and expiry), as in the node scripts' tests.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.scripts import Delivery, Scripts, find_lua_dir
from lingua_shared.testing import key_snapshot, node_registration, sync_redis_for_tests

NOW = 1_700_000_000_000
TTL = 600_000
LEASE = 3_000
DEADLINE = 30_000
GAP = 5_000
SESSION_TTL = 900_000
MINE = Keys("test").prefix + "*"  # the fixtures' cell; other suites may share the database


# --- set-up helpers --------------------------------------------------------------------------
def reg(node_id: str, **over: Any) -> dict[str, Any]:
    return node_registration(
        node_id, **{"now_ms": NOW, "ttl_ms": TTL, "gateway_id": f"gw-{node_id}", **over}
    )


async def join(scripts: Scripts, node_id: str, now_ms: int = NOW, **over: Any) -> None:
    await scripts.register_node_v2(**reg(node_id, now_ms=now_ms, **over))
    r = await scripts.heartbeat_with_pool_assign(
        node_id=node_id,
        conn_id=over.get("conn_id", f"c-{node_id}"),
        gateway_id=f"gw-{node_id}",
        now_ms=now_ms,
    )
    assert r.alive


async def join_single_slot(scripts: Scripts, count: int) -> list[str]:
    """``count`` nodes of one slot each: a session's job i goes to node i + 1 (its own node
    is busy, so each job spills to the next idle one). A node answers a session's jobs in the
    order they were assigned to it (job_finish relies on it), so tests that finish jobs in
    any order give each job a node of its own."""
    nodes = [f"n{i + 1}" for i in range(count)]
    for n in nodes:
        await join(scripts, n, capacity=1)
    return nodes


async def open_session(redis: Redis, keys: Keys, session_id: str = "s1") -> None:
    await redis.hset(
        keys.session(session_id), mapping={"gateway_id": "gw-s", "conn_id": f"cs-{session_id}"}
    )


def create_kw(job_id: str, session_id: str = "s1", index: int = 0, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "request_key": f"{session_id}:{index}",
        "job_id": job_id,
        "now_ms": NOW,
        "ttl_ms": TTL,
        "fields": {"session_id": session_id, "utterance_index": index},
        "audio": "QUJD",
    }
    kw.update(over)
    return kw


async def dispatch(
    scripts: Scripts,
    job_id: str,
    session_id: str = "s1",
    index: int = 0,
    attempt: int = 1,
    create: bool = True,
) -> str:
    """Create (on attempt 1) and reserve a node for ``attempt``; the node's id."""
    if attempt == 1 and create:
        assert (await scripts.job_create(**create_kw(job_id, session_id, index))).code == 1
    r = await scripts.select_node(
        job_id=job_id,
        attempt=attempt,
        now_ms=NOW,
        lease_ms=LEASE,
        pair_src="zh",
        pair_tgt="en",
        services=["asr", "semantic"],
        policy="pack",
        candidates=8,
        wait_until_ms=0,
        retry_ms=100,
    )
    assert r.code == 1, r
    return r.node_id


def ack_kw(job_id: str, node_id: str, attempt: int = 1, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "job_id": job_id,
        "attempt": attempt,
        "node_id": node_id,
        "now_ms": NOW + 100,
        "deadline_ms": DEADLINE,
    }
    kw.update(over)
    return kw


def finish_kw(job_id: str, node_id: str, attempt: int = 1, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "job_id": job_id,
        "attempt": attempt,
        "node_id": node_id,
        "now_ms": NOW + 1_000,
        "outcome": "done",
        "payload": {"type": "translation_result", "job_id": job_id},
        "gap_ms": GAP,
        "session_ttl_ms": SESSION_TTL,
    }
    kw.update(over)
    return kw


def release_kw(job_id: str, attempt: int = 1, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "job_id": job_id,
        "attempt": attempt,
        "reason": "ack_timeout",
        "now_ms": NOW + 500,
        "max_attempts": 3,
    }
    kw.update(over)
    return kw


# --- reading helpers -------------------------------------------------------------------------
async def snapshot(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    return await key_snapshot(redis)


def decode(reply: list[Any]) -> list[Any]:
    return [x.decode() if isinstance(x, bytes) else x for x in reply]


async def raw(scripts: Scripts, name: str, kw: dict[str, Any]) -> list[Any]:
    k, a = getattr(scripts, f"{name}_args")(**kw)
    return decode(await scripts.script(name)(keys=k, args=a))


async def hash_of(redis: Redis, key: str) -> dict[str, str]:
    return {f.decode(): v.decode() for f, v in (await redis.hgetall(key)).items()}


async def zmembers(redis: Redis, key: str) -> dict[str, float]:
    return {m.decode(): s for m, s in await redis.zrange(key, 0, -1, withscores=True)}


async def smembers(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(key)}


async def slots(redis: Redis, keys: Keys, node_id: str) -> tuple[int, int]:
    """(running, reserved) of a node."""
    running, reserved = await redis.hmget(keys.node(node_id), "running", "reserved")
    return int(running), int(reserved)


def indexes(d: Delivery) -> list[int]:
    return [i for i, _ in d.items]


# --- job_create ------------------------------------------------------------------------------
async def test_create_writes_the_job_its_audio_and_its_request_key(
    redis: Redis, keys: Keys, scripts: Scripts
):
    fields = {"session_id": "s1", "utterance_index": 3, "pipeline": {"use_tts": True}, "mode": "x"}
    k, a = scripts.job_create_args(**create_kw("j1", index=3, fields=fields))
    assert decode(await scripts.script("job_create")(keys=k, args=a)) == [1, "j1"]
    assert await hash_of(redis, keys.job("j1")) == {
        "job_id": "j1",
        "request_key": "s1:3",
        "state": "queued",
        "attempt": "0",
        "created_at": str(NOW),
        "tried": "",
        "session_id": "s1",
        "utterance_index": "3",
        "pipeline": '{"use_tts": true}',
        "mode": "x",
    }
    assert await redis.get(keys.job_audio("j1")) == b"QUJD"
    assert await redis.get(keys.idem("s1:3")) == b"j1"
    for key in (keys.job("j1"), keys.job_audio("j1"), keys.idem("s1:3")):
        assert TTL - 5_000 < await redis.pttl(key) <= TTL, key


async def test_a_duplicate_request_returns_the_first_job_and_writes_nothing(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    assert (await scripts.job_create(**create_kw("j1"))).code == 1
    before = await snapshot(redis)
    for job_id, audio in (("j1", "QUJD"), ("j2", "other")):
        kw = create_kw(job_id, audio=audio, now_ms=NOW + 7)
        assert await raw(scripts, "job_create", kw) == [2, "j1"]
    assert await snapshot(redis) == before
    assert not await redis.exists(keys.job("j2"))

    # still the same job once it is under way
    assert await dispatch(scripts, "j1", create=False) == "n1"
    res = await scripts.job_create(**create_kw("j3"))
    assert (res.code, res.value) == (2, "j1")
    assert await slots(redis, keys, "n1") == (0, 1)
    assert not await redis.exists(keys.job("j3"))


# --- job_ack ---------------------------------------------------------------------------------
async def test_ack_commits_the_reservation_with_fencing(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1")
    await join(scripts, "n2")
    node = await dispatch(scripts, "j1")
    assert node == "n1"
    before = await snapshot(redis)
    for kw, reason in (
        (ack_kw("j1", "n1", attempt=2), "stale_attempt"),
        (ack_kw("j1", "n2"), "wrong_node"),
    ):
        assert await raw(scripts, "job_ack", kw) == [-5, reason]
        assert await snapshot(redis) == before
    assert await raw(scripts, "job_ack", ack_kw("ghost", "n1")) == [-6, ""]

    r = await scripts.job_ack(**ack_kw("j1", "n1"))
    assert (r.code, r.value) == (1, "s1")
    assert await slots(redis, keys, "n1") == (1, 0)
    assert await redis.zscore(keys.pool("en_zh:eu:a100:0"), "n1") == 0.25  # same load
    job = await hash_of(redis, keys.job("j1"))
    assert (job["state"], job["acked_at"]) == ("acked", str(NOW + 100))
    assert await zmembers(redis, keys.timers) == {"j1": NOW + 100 + DEADLINE}
    assert await smembers(redis, keys.node_jobs("n1")) == {"j1"}

    after = await snapshot(redis)
    r = await scripts.job_ack(**ack_kw("j1", "n1", now_ms=NOW + 200))  # a replay
    assert (r.code, r.value) == (0, "s1")
    assert await snapshot(redis) == after

    # once the attempt is taken back, its ack is stale
    assert (await scripts.job_release(**release_kw("j1"))).code == 1
    assert await raw(scripts, "job_ack", ack_kw("j1", "n1")) == [-5, "state_queued"]


# --- nodes that never ack (lingua's agent) --------------------------------------------------
async def test_a_node_that_does_not_ack_has_its_job_accepted_at_assignment(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1", acks=False)
    await open_session(redis, keys)
    assert await dispatch(scripts, "j0", index=0) == "n1"
    job = await hash_of(redis, keys.job("j0"))
    assert (job["state"], job["acked_at"]) == ("acked", str(NOW))
    assert await slots(redis, keys, "n1") == (1, 0)  # running: no lease waits for an ack
    # the timer is the job deadline, not the ack lease
    assert await zmembers(redis, keys.timers) == {"j0": NOW + DEADLINE}
    # a node that acks after all is remembered: its next job waits for its ack
    assert (await scripts.job_ack(**ack_kw("j0", "n1"))).code == 0
    assert (await hash_of(redis, keys.node("n1")))["acks"] == "1"
    assert await dispatch(scripts, "j1", index=1) == "n1"
    assert (await hash_of(redis, keys.job("j1")))["state"] == "assigned"
    assert await zmembers(redis, keys.timers) == {"j0": NOW + DEADLINE, "j1": NOW + LEASE}


async def test_an_answer_ends_the_sessions_earlier_jobs_on_that_node_without_a_result(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """lingua's agent withholds some results; it answers a session's jobs in the order they
    reached it, so its answer to 2 means 0 and 1 (sent to it before, as its gateway saw) are
    finished: freed, not redispatched, missing_result no_result. Only those of the session
    that are still that node's attempt end; another session's job and a job on another node
    stay."""
    await join(scripts, "n1", acks=False, capacity=8)
    await join(scripts, "n2", acks=False, capacity=8)
    await open_session(redis, keys)
    await open_session(redis, keys, "s2")
    for i in range(3):
        assert await dispatch(scripts, f"j{i}", index=i) == "n1"
    assert await dispatch(scripts, "other", "s2", index=0) in ("n1", "n2")
    await redis.hset(keys.node("n1"), "status", "draining")  # s1's node busy: j3 spills
    assert await dispatch(scripts, "j3", index=3) == "n2"
    await redis.hset(keys.node("n1"), "status", "ready")
    # what the gateway saw before j2 on n1's socket: j0, j1, the other session's job (its
    # gateway lists only the same session's; a wrong entry is ignored all the same), j3's id
    # with a stale attempt
    earlier = [("j0", 1), ("j1", 1), ("other", 1), ("j3", 2)]
    d = await scripts.job_finish(**finish_kw("j2", "n1", earlier=earlier))
    assert [(i, p["type"], p.get("reason")) for i, p in d.items] == [
        (0, "missing_result", "no_result"),
        (1, "missing_result", "no_result"),
        (2, "translation_result", None),
    ]
    assert d.items[0][1]["job_id"] == "j0" and d.items[0][1]["session_id"] == "s1"
    for job in ("j0", "j1"):
        h = await hash_of(redis, keys.job(job))
        assert (h["state"], h["outcome"]) == ("done", "no_result")
    assert (await hash_of(redis, keys.job("j3")))["state"] == "acked"  # on n2: untouched
    assert (await hash_of(redis, keys.job("other")))["state"] == "acked"  # another session
    assert await smembers(redis, keys.node_jobs("n1")) | await smembers(
        redis, keys.node_jobs("n2")
    ) == {"j3", "other"}
    assert set(await zmembers(redis, keys.timers)) == {"j3", "other"}


async def test_a_released_job_may_wait_for_a_slot_again(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1")
    await open_session(redis, keys)
    await dispatch(scripts, "j0", index=0)
    await redis.hset(keys.job("j0"), "wait_until", NOW - 1)  # its first wait is long over
    assert (await scripts.job_release(**release_kw("j0", reason="deadline"))).code == 1
    assert "wait_until" not in await hash_of(redis, keys.job("j0"))


# --- job_finish ------------------------------------------------------------------------------
async def test_finish_frees_a_reserved_or_running_slot_and_ends_the_job(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1", lang_sets=[["en", "zh"], ["en", "ja", "zh"]], capacity=1)
    await join(scripts, "n2", lang_sets=[["en", "zh"], ["en", "ja", "zh"]], capacity=1)
    await open_session(redis, keys)
    assert await dispatch(scripts, "j0", index=0) == "n1"
    assert await dispatch(scripts, "j1", index=1) == "n2"
    assert (await scripts.job_ack(**ack_kw("j0", "n1"))).code == 1
    assert [await slots(redis, keys, n) for n in ("n1", "n2")] == [(1, 0), (0, 1)]

    d = await scripts.job_finish(**finish_kw("j1", "n2", outcome="failed"))  # still reserved
    assert (d.code, d.gateway_id, d.conn_id, d.items) == (1, "gw-s", "cs-s1", [])
    assert await slots(redis, keys, "n2") == (0, 0)
    d = await scripts.job_finish(**finish_kw("j0", "n1"))  # running
    assert (d.code, indexes(d)) == (1, [0, 1])
    assert d.items[0][1] == {"type": "translation_result", "job_id": "j0"}
    assert await slots(redis, keys, "n1") == (0, 0)
    for shard in ("en_zh:eu:a100:0", "en_ja_zh:eu:a100:0"):
        assert await zmembers(redis, keys.pool(shard)) == {"n1": 0.0, "n2": 0.0}
    for job_id, state in (("j0", "done"), ("j1", "failed")):
        job = await hash_of(redis, keys.job(job_id))
        assert (job["state"], job["finished_at"]) == (state, str(NOW + 1_000))
        assert not await redis.exists(keys.job_audio(job_id))
    assert not await redis.exists(keys.timers)
    assert not await redis.exists(keys.node_jobs("n1"))
    assert not await redis.exists(keys.node_jobs("n2"))
    assert not await redis.exists(keys.gaps)
    assert not await redis.exists(keys.session_results("s1"))
    assert (await hash_of(redis, keys.session("s1")))["next_deliver"] == "2"
    assert SESSION_TTL - 5_000 < await redis.pttl(keys.session("s1")) <= SESSION_TTL


@pytest.mark.parametrize("seed", range(6))
async def test_results_finished_in_any_order_are_delivered_once_in_order(
    redis: Redis, keys: Keys, scripts: Scripts, seed: int
):
    await join_single_slot(scripts, 5)
    await open_session(redis, keys)
    holder = {f"j{i}": await dispatch(scripts, f"j{i}", index=i) for i in range(5)}
    assert holder == {f"j{i}": f"n{i + 1}" for i in range(5)}
    order = list(range(5))
    random.Random(seed).shuffle(order)
    if seed == 0:
        order = [4, 3, 2, 1, 0]

    delivered: list[tuple[int, dict[str, Any]]] = []
    for step, i in enumerate(order):
        job = f"j{i}"
        d = await scripts.job_finish(**finish_kw(job, holder[job], now_ms=NOW + 1_000 + step))
        assert d.code == 1 and (d.gateway_id, d.conn_id) == ("gw-s", "cs-s1")
        delivered += d.items
        waiting = set(order[: step + 1]) - {i for i, _ in delivered}
        gaps = await zmembers(redis, keys.gaps)
        assert ("s1" in gaps) == bool(waiting), (order, step)
        stored = {int(x) for x in await redis.hkeys(keys.session_results("s1"))}
        assert stored == waiting
    assert [i for i, _ in delivered] == [0, 1, 2, 3, 4], order
    assert [p["job_id"] for _, p in delivered] == [f"j{i}" for i in range(5)]
    assert [await slots(redis, keys, n) for n in holder.values()] == [(0, 0)] * 5
    assert not await redis.exists(keys.gaps)


async def test_a_holes_deadline_runs_from_the_oldest_outcome_it_holds(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Not a fresh gap per hole: the outcome of 2, ready at +1 s, waits one gap in all,
    whether 0 or 1 (or both, one after the other) hold it."""
    await join_single_slot(scripts, 4)
    await open_session(redis, keys)
    for i in range(4):
        await dispatch(scripts, f"j{i}", index=i)
    await scripts.job_finish(**finish_kw("j2", "n3", now_ms=NOW + 1_000))
    assert await zmembers(redis, keys.gaps) == {"s1": NOW + 1_000 + GAP}
    await scripts.job_finish(**finish_kw("j3", "n4", now_ms=NOW + 2_000))
    assert await zmembers(redis, keys.gaps) == {"s1": NOW + 1_000 + GAP}  # same hole (0)
    d = await scripts.job_finish(**finish_kw("j0", "n1", now_ms=NOW + 3_000))
    assert indexes(d) == [0]
    assert await zmembers(redis, keys.gaps) == {"s1": NOW + 1_000 + GAP}  # 2 still waits
    assert await zmembers(redis, keys.session_waiting("s1")) == {
        "2": NOW + 1_000,
        "3": NOW + 2_000,
    }


async def test_duplicate_stale_and_unknown_finishes_write_nothing(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1", capacity=2)
    await join(scripts, "n2", capacity=2)
    await open_session(redis, keys)
    assert await dispatch(scripts, "j0", index=0) == "n1"
    await redis.hset(keys.node("n1"), "status", "draining")  # busy: j1 spills to n2
    assert await dispatch(scripts, "j1", index=1) == "n2"
    await redis.hset(keys.node("n1"), "status", "ready")
    assert (await scripts.job_release(**release_kw("j1"))).code == 1
    assert await dispatch(scripts, "j1", index=1, attempt=2) == "n1"
    before = await snapshot(redis)
    for kw, reply in (
        (finish_kw("j1", "n2", attempt=1), [-5, "stale_attempt"]),  # the zombie's result
        (finish_kw("j1", "n2", attempt=2), [-5, "wrong_node"]),
        (finish_kw("ghost", "n1"), [-6, ""]),
    ):
        assert await raw(scripts, "job_finish", kw) == reply
        assert await snapshot(redis) == before
    d = await scripts.job_finish(**finish_kw("j1", "n2", attempt=1))
    assert (d.code, d.reason, d.gateway_id) == (-5, "stale_attempt", "")

    assert (await scripts.job_finish(**finish_kw("j1", "n1", attempt=2))).code == 1
    after = await snapshot(redis)
    for kw in (
        finish_kw("j1", "n1", attempt=2, now_ms=NOW + 5_000),  # a replay or a duplicate
        finish_kw("j1", "", attempt=0, outcome="failed"),  # the scheduler, too late
        finish_kw("j1", "n2", attempt=1),
    ):
        assert await raw(scripts, "job_finish", kw) == [0, ""]
        assert await snapshot(redis) == after
    assert [await slots(redis, keys, n) for n in ("n1", "n2")] == [(0, 1), (0, 0)]


async def test_an_answer_overtaken_by_its_nodes_goodbye_still_ends_the_job(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """A node sends its answer and closes; the goodbye's take back (node_lost) runs before
    the answer's job_finish. Until the job is dispatched again, that answer still ends it;
    once another attempt holds it, the answer is stale, as any other."""
    for n in ("n1", "n2"):
        await join(scripts, n)
    await open_session(redis, keys)
    assert await dispatch(scripts, "j0", index=0) == "n1"
    assert await dispatch(scripts, "j1", index=1) == "n1"
    lost = await scripts.node_lost(node_id="n1", conn_id="c-n1", now_ms=NOW + 500, max_attempts=3)
    assert sorted(t.job_id for t in lost.jobs) == ["j0", "j1"]
    assert (await hash_of(redis, keys.job("j0")))["state"] == "queued"

    d = await scripts.job_finish(**finish_kw("j0", "n1"))  # before any redispatch
    assert (d.code, indexes(d)) == (1, [0])
    job = await hash_of(redis, keys.job("j0"))
    assert job["state"] == "done" and "j0" not in await zmembers(redis, keys.timers)
    assert [await slots(redis, keys, n) for n in ("n1", "n2")] == [(0, 0), (0, 0)]

    assert await dispatch(scripts, "j1", index=1, attempt=2) == "n2"  # j1 moved on first
    before = await snapshot(redis)
    assert await raw(scripts, "job_finish", finish_kw("j1", "n1")) == [-5, "stale_attempt"]
    assert await snapshot(redis) == before
    # a release for another reason (its deadline, a refusal) leaves no such window
    holder = await dispatch(scripts, "j2", index=2)
    assert (await scripts.job_release(**release_kw("j2", reason="deadline"))).code == 1
    assert await raw(scripts, "job_finish", finish_kw("j2", holder)) == [-5, "state_queued"]


async def test_scheduler_finish_fails_a_queued_job_in_its_place(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await open_session(redis, keys)
    await dispatch(scripts, "j0", index=0)
    assert (await scripts.job_create(**create_kw("j1", index=1))).code == 1  # never placed
    # a node cannot finish a job it does not hold
    assert await raw(scripts, "job_finish", finish_kw("j1", "n1", attempt=0)) == [-5, "wrong_node"]
    err = {"type": "error", "code": "NO_AVAILABLE_NODE", "utterance_index": 1}
    d = await scripts.job_finish(**finish_kw("j1", "", attempt=0, outcome="failed", payload=err))
    assert (d.code, d.items) == (1, [])  # waits for utterance 0
    assert (await hash_of(redis, keys.job("j1")))["state"] == "failed"
    assert await slots(redis, keys, "n1") == (0, 1)  # j0's slot is untouched
    d = await scripts.job_finish(**finish_kw("j0", "", attempt=0, outcome="failed"))
    assert indexes(d) == [0, 1] and d.items[1][1] == err
    assert await slots(redis, keys, "n1") == (0, 0)
    assert not await redis.exists(keys.node_jobs("n1"))


# --- job_release -----------------------------------------------------------------------------
async def test_release_redispatches_until_max_attempts(redis: Redis, keys: Keys, scripts: Scripts):
    for n in ("n1", "n2", "n3"):
        await join(scripts, n)
    assert await dispatch(scripts, "j1") == "n1"
    assert (await scripts.job_ack(**ack_kw("j1", "n1"))).code == 1
    assert await slots(redis, keys, "n1") == (1, 0)

    r = await scripts.job_release(**release_kw("j1", 1, reason="deadline"))
    assert (r.code, r.attempt, r.node_id, r.gateway_id, r.conn_id) == (1, 2, "n1", "gw-n1", "c-n1")
    assert await slots(redis, keys, "n1") == (0, 0)  # a running slot freed
    assert await redis.zscore(keys.pool("en_zh:eu:a100:0"), "n1") == 0.0
    job = await hash_of(redis, keys.job("j1"))
    assert (job["state"], job["release_reason"], job["released_at"]) == (
        "queued",
        "deadline",
        str(NOW + 500),
    )
    # a rescue timer 1 s ahead: a dispatcher dying right after this call strands nothing
    assert await zmembers(redis, keys.timers) == {"j1": NOW + 500 + 1_000}
    assert not await redis.exists(keys.node_jobs("n1"))

    after = await snapshot(redis)
    assert await raw(scripts, "job_release", release_kw("j1", 1)) == [0, "queued"]  # stale
    assert await snapshot(redis) == after

    assert await dispatch(scripts, "j1", attempt=2) == "n2"
    assert await raw(scripts, "job_release", release_kw("j1", 1)) == [0, "assigned"]
    # a reserved slot; the node and its connection, to send it job_cancel
    assert await raw(scripts, "job_release", release_kw("j1", 2)) == [1, 3, "n2", "gw-n2", "c-n2"]
    assert await slots(redis, keys, "n2") == (0, 0)
    assert await dispatch(scripts, "j1", attempt=3) == "n3"
    exhausted = await raw(scripts, "job_release", release_kw("j1", 3))
    assert exhausted == [2, 3, "n3", "gw-n3", "c-n3"]
    assert [await slots(redis, keys, n) for n in ("n1", "n2", "n3")] == [(0, 0)] * 3
    assert (await hash_of(redis, keys.job("j1")))["tried"] == "n1,n2,n3"
    assert await raw(scripts, "job_release", release_kw("ghost", 1)) == [-6, ""]


async def test_release_of_a_job_whose_node_is_gone_frees_nothing_else(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await join(scripts, "n2")
    await dispatch(scripts, "j1")
    await scripts.node_offline(node_id="n1", mode="graceful", now_ms=NOW + 10)
    assert (await scripts.job_release(**release_kw("j1", reason="node_lost"))).code == 1
    assert not await redis.exists(keys.node("n1"))
    assert not await redis.exists(keys.node_jobs("n1"))
    assert await slots(redis, keys, "n2") == (0, 0)


async def test_a_restarted_node_keeps_its_new_slots_when_old_jobs_end(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """A node that left and registered again starts from zero: the jobs it held before
    must not give back slots that now belong to new jobs (invariant 1)."""
    await join(scripts, "n1", capacity=2)
    await open_session(redis, keys)
    await dispatch(scripts, "old0", index=0)
    await dispatch(scripts, "old1", index=1)
    assert (await scripts.job_ack(**ack_kw("old1", "n1"))).code == 1
    await scripts.node_offline(node_id="n1", mode="graceful", now_ms=NOW + 10)
    await join(scripts, "n1", capacity=2, now_ms=NOW + 20, conn_id="c-n1-b")  # restarted
    assert await slots(redis, keys, "n1") == (0, 0)
    await dispatch(scripts, "new2", index=2)
    await dispatch(scripts, "new3", index=3)
    assert (await scripts.job_ack(**ack_kw("new3", "n1"))).code == 1
    assert await slots(redis, keys, "n1") == (1, 1)

    # the old jobs end late: their slots died with the old registration
    assert (await scripts.job_ack(**ack_kw("old0", "n1"))).code == 1  # committed, not counted
    assert await slots(redis, keys, "n1") == (1, 1)
    assert (await scripts.job_release(**release_kw("old0", reason="deadline"))).code == 1
    assert (await scripts.job_finish(**finish_kw("old1", "n1"))).code == 1
    assert await slots(redis, keys, "n1") == (1, 1)
    assert await redis.zscore(keys.pool("en_zh:eu:a100:0"), "n1") == 1.0
    assert await smembers(redis, keys.node_jobs("n1")) == {"new2", "new3"}
    assert (await scripts.job_create(**create_kw("new4", index=4))).code == 1
    sel = await scripts.select_node(
        job_id="new4",
        attempt=1,
        now_ms=NOW + 600,
        lease_ms=LEASE,
        pair_src="zh",
        pair_tgt="en",
        services=[],
        policy="pack",
        candidates=8,
        wait_until_ms=0,
        retry_ms=1,
    )
    assert (sel.code, sel.reason) == (-4, "no_free_slot")  # full: two jobs on two slots
    assert (await scripts.job_finish(**finish_kw("new2", "n1"))).code == 1
    assert (await scripts.job_finish(**finish_kw("new3", "n1"))).code == 1
    assert await slots(redis, keys, "n1") == (0, 0)


async def test_a_node_registered_again_in_the_same_millisecond_owes_nothing_to_old_jobs(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Found by the scheduling model (test_scheduling_model.py): a goodbye and a new
    registration in one millisecond gave both registrations the same registered_at, so the
    old job's ack moved a slot into the new registration's running count, and its end took
    a slot from a new job's reservation (reserved + running no longer matched the leases)."""
    await join(scripts, "n1", capacity=1)
    await open_session(redis, keys)
    await dispatch(scripts, "old0", index=0)
    await scripts.node_offline(node_id="n1", mode="graceful", now_ms=NOW)
    await join(scripts, "n1", capacity=1, conn_id="c-n1-b")  # the same instant, NOW
    assert (await scripts.job_ack(**ack_kw("old0", "n1", now_ms=NOW))).code == 1
    assert await slots(redis, keys, "n1") == (0, 0)  # the old lease commits nothing here
    await dispatch(scripts, "new1", index=1)
    assert await slots(redis, keys, "n1") == (0, 1)
    assert (await scripts.job_finish(**finish_kw("old0", "n1", now_ms=NOW))).code == 1
    assert await slots(redis, keys, "n1") == (0, 1)  # new1 keeps its reservation
    assert await redis.zscore(keys.pool("en_zh:eu:a100:0"), "n1") == 1.0


async def test_jobs_of_a_record_written_before_reg_id_still_free_their_slots(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """A record registered by an older script has registered_at but no reg_id; a job placed
    on it records registered_at and, when it ends, gives its slot back to that record."""
    await join(scripts, "n1", capacity=2)
    await redis.hdel(keys.node("n1"), "reg_id")
    await open_session(redis, keys)
    await dispatch(scripts, "j1")
    assert await redis.hget(keys.job("j1"), "node_reg") == str(NOW).encode()
    assert (await scripts.job_ack(**ack_kw("j1", "n1"))).code == 1
    assert await slots(redis, keys, "n1") == (1, 0)
    assert (await scripts.job_finish(**finish_kw("j1", "n1"))).code == 1
    assert await slots(redis, keys, "n1") == (0, 0)


# --- gaps ------------------------------------------------------------------------------------
async def test_gap_expire_answers_an_overdue_hole_and_a_late_result_is_refused(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join_single_slot(scripts, 4)
    await open_session(redis, keys)
    for i in range(4):
        await dispatch(scripts, f"j{i}", index=i)
    t1 = NOW + 1_000
    assert indexes(await scripts.job_finish(**finish_kw("j1", "n2", now_ms=t1))) == []
    assert indexes(await scripts.job_finish(**finish_kw("j3", "n4", now_ms=t1 + 1))) == []

    def gap_kw(now: int) -> dict[str, Any]:
        return {"session_id": "s1", "now_ms": now, "gap_ms": GAP, "session_ttl_ms": SESSION_TTL}

    before = await snapshot(redis)
    assert await raw(scripts, "gap_expire", gap_kw(t1 + GAP - 1)) == [0, ""]  # not yet
    assert await snapshot(redis) == before

    d = await scripts.gap_expire(**gap_kw(t1 + GAP))
    assert (d.code, d.gateway_id, d.conn_id, indexes(d)) == (1, "gw-s", "cs-s1", [0, 1])
    assert d.items[0][1] == {
        "type": "missing_result",
        "session_id": "s1",
        "utterance_index": 0,
        "reason": "gap_timeout",
        "created_at_ms": t1 + GAP,
    }
    assert d.items[1][1]["job_id"] == "j1"
    # the next hole (2) holds 3, ready since t1 + 1: its deadline runs from then
    assert await zmembers(redis, keys.gaps) == {"s1": t1 + 1 + GAP}
    assert (await hash_of(redis, keys.session("s1")))["next_deliver"] == "2"

    # the late result of 0 ends its job and frees its slot, but is not delivered again
    d = await scripts.job_finish(**finish_kw("j0", "n1", now_ms=t1 + GAP + 1))
    assert (d.code, d.items) == (3, [])
    assert (await hash_of(redis, keys.job("j0")))["state"] == "done"
    assert await slots(redis, keys, "n1") == (0, 0)
    assert await smembers(redis, keys.node_jobs("n3")) == {"j2"}
    assert (await hash_of(redis, keys.session("s1")))["next_deliver"] == "2"

    assert (await scripts.gap_expire(**gap_kw(t1 + GAP))).code == 0
    d = await scripts.gap_expire(**gap_kw(t1 + 1 + GAP))
    assert [(i, p["type"]) for i, p in d.items] == [
        (2, "missing_result"),
        (3, "translation_result"),
    ]
    assert not await redis.exists(keys.gaps)
    assert not await redis.exists(keys.session_results("s1"))
    assert await raw(scripts, "gap_expire", gap_kw(t1 + 9 * GAP)) == [0, ""]  # nothing left


async def test_gap_expire_without_a_hole_does_nothing(redis: Redis, keys: Keys, scripts: Scripts):
    kw = {"session_id": "s1", "now_ms": NOW, "gap_ms": GAP, "session_ttl_ms": SESSION_TTL}
    assert await raw(scripts, "gap_expire", kw) == [0, ""]
    await redis.zadd(keys.gaps, {"s1": NOW - 1})  # a deadline left over, nothing waiting
    assert await raw(scripts, "gap_expire", kw) == [0, ""]
    assert not await redis.exists(keys.gaps)
    assert await redis.keys(MINE) == []


# --- timers_claim ----------------------------------------------------------------------------
async def test_timers_claim_takes_only_due_timers_and_pushes_them_forward(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await redis.zadd(keys.timers, {"j1": NOW + 100, "j2": NOW + 200, "j3": NOW + 500, "j4": NOW})
    assert await scripts.timers_claim(now_ms=NOW + 200, claim_ms=1_000, limit=2) == ["j4", "j1"]
    assert await scripts.timers_claim(now_ms=NOW + 200, claim_ms=1_000, limit=10) == ["j2"]
    assert await zmembers(redis, keys.timers) == {
        "j4": NOW + 1_200,
        "j1": NOW + 1_200,
        "j2": NOW + 1_200,
        "j3": NOW + 500,
    }
    before = await snapshot(redis)
    assert await scripts.timers_claim(now_ms=NOW + 200, claim_ms=1_000, limit=10) == []
    assert await snapshot(redis) == before
    # a claimer that died: its timers come due again for another
    got = await scripts.timers_claim(now_ms=NOW + 1_200, claim_ms=50, limit=10)
    assert got == ["j3", "j1", "j2", "j4"]
    assert set((await zmembers(redis, keys.timers)).values()) == {NOW + 1_250}


# --- service_cooldown ------------------------------------------------------------------------
async def test_service_cooldown_extends_but_never_shortens(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    r = await scripts.service_cooldown(node_id="n1", service="asr", until_ms=NOW + 5_000)
    assert (r.code, r.value) == (1, str(NOW + 5_000))
    r = await scripts.service_cooldown(node_id="n1", service="asr", until_ms=NOW + 9_000)
    assert (r.code, r.value) == (1, str(NOW + 9_000))
    before = await snapshot(redis)
    r = await scripts.service_cooldown(node_id="n1", service="asr", until_ms=NOW + 1_000)
    assert (r.code, r.value) == (1, str(NOW + 9_000))
    assert await snapshot(redis) == before
    await scripts.service_cooldown(node_id="n1", service="tts", until_ms=NOW + 2_000)
    node = await hash_of(redis, keys.node("n1"))
    assert (node["unavail:asr"], node["unavail:tts"]) == (str(NOW + 9_000), str(NOW + 2_000))

    before = await snapshot(redis)
    assert await raw(
        scripts, "service_cooldown", {"node_id": "gone", "service": "asr", "until_ms": NOW}
    ) == [0, ""]
    assert await snapshot(redis) == before


# --- validation ------------------------------------------------------------------------------
INVALID: list[tuple[str, str, Any, str]] = [
    ("job_create", "request_key", "", "request_key"),
    ("job_create", "request_key", "k" * 257, "request_key"),
    ("job_create", "job_id", "a b", "job_id"),
    ("job_create", "now_ms", 0, "now_ms"),
    ("job_create", "ttl_ms", -1, "ttl_ms"),
    ("job_create", "ttl_ms", 10**30, "ttl_ms"),
    ("job_create", "fields", {"utterance_index": 0}, "fields"),
    ("job_create", "fields", {"session_id": "", "utterance_index": 0}, "fields"),
    ("job_create", "fields", {"session_id": "s9", "utterance_index": -1}, "fields"),
    ("job_create", "fields", {"session_id": "s9", "utterance_index": "one"}, "fields"),
    ("job_ack", "job_id", "", "job_id"),
    ("job_ack", "attempt", 0, "attempt"),
    ("job_ack", "node_id", "", "node_id"),
    ("job_ack", "now_ms", "x", "now_ms"),
    ("job_ack", "deadline_ms", 0, "deadline_ms"),
    ("job_finish", "job_id", "j:1", "job_id"),
    ("job_finish", "attempt", -1, "attempt"),
    ("job_finish", "node_id", "n 1", "node_id"),
    ("job_finish", "now_ms", -5, "now_ms"),
    ("job_finish", "outcome", "ok", "outcome"),
    ("job_finish", "gap_ms", 0, "gap_ms"),
    ("job_finish", "session_ttl_ms", 0, "session_ttl_ms"),
    ("job_release", "job_id", "", "job_id"),
    ("job_release", "attempt", 0, "attempt"),
    ("job_release", "reason", "", "reason"),
    ("job_release", "reason", "r" * 65, "reason"),
    ("job_release", "now_ms", 1.5, "now_ms"),
    ("job_release", "max_attempts", 0, "max_attempts"),
    ("gap_expire", "session_id", "", "session_id"),
    ("gap_expire", "now_ms", 0, "now_ms"),
    ("gap_expire", "gap_ms", 0, "gap_ms"),
    ("gap_expire", "session_ttl_ms", -1, "session_ttl_ms"),
    ("timers_claim", "now_ms", 0, "now_ms"),
    ("timers_claim", "claim_ms", 0, "claim_ms"),
    ("timers_claim", "limit", 0, "limit"),
    ("service_cooldown", "node_id", "", "node_id"),
    ("service_cooldown", "service", "ASR", "service"),
    ("service_cooldown", "until_ms", 0, "until_ms"),
]


def valid_kw(name: str) -> dict[str, Any]:
    """Arguments that would write something, so that any write before validation shows."""
    t = NOW + 60_000
    return {
        "job_create": create_kw("j9", index=9),
        "job_ack": ack_kw("j1", "n1", now_ms=t),
        "job_finish": finish_kw("j1", "n1", now_ms=t),
        "job_release": release_kw("j1", now_ms=t),
        "gap_expire": {"session_id": "s1", "now_ms": t, "gap_ms": GAP, "session_ttl_ms": 1},
        "timers_claim": {"now_ms": t, "claim_ms": 1_000, "limit": 10},
        "service_cooldown": {"node_id": "n1", "service": "asr", "until_ms": t},
    }[name]


@pytest.mark.parametrize(
    ("name", "arg", "value", "field"),
    INVALID,
    ids=[f"{n}-{a}={v!r}"[:50] for n, a, v, _ in INVALID],
)
async def test_invalid_input_is_rejected_before_any_write(
    redis: Redis, keys: Keys, scripts: Scripts, name: str, arg: str, value: Any, field: str
):
    await join(scripts, "n1")
    await open_session(redis, keys)
    await dispatch(scripts, "j1", index=1)  # a job under way with a hole before it
    await dispatch(scripts, "j0", index=0)
    await scripts.job_finish(**finish_kw("j1", "n1"))
    await redis.zadd(keys.gaps, {"s1": NOW})
    await scripts.job_create(**create_kw("j2", index=2))
    before = await snapshot(redis)
    kw = valid_kw(name)
    kw[arg] = value
    assert await raw(scripts, name, kw) == [-1, field]
    assert await snapshot(redis) == before
    with pytest.raises(ScriptRejected) as exc:
        await getattr(scripts, name)(**kw)
    assert exc.value.details == {"field": field}
    assert await snapshot(redis) == before


async def test_raw_json_arguments_are_checked(redis: Redis, keys: Keys, scripts: Scripts):
    k, a = scripts.job_create_args(**create_kw("j1"))
    for bad in ("not json", "[1, 2]x", '"text"'):
        a[4] = bad
        assert decode(await scripts.script("job_create")(keys=k, args=a)) == [-1, "fields"]
    k, a = scripts.job_finish_args(**finish_kw("j1", "n1"))
    a[5] = "{broken"
    assert decode(await scripts.script("job_finish")(keys=k, args=a)) == [-1, "payload"]
    assert await redis.keys(MINE) == []


# --- the whole slot accounting under any sequence of events (RELIABILITY S1) -----------------
NODES = ["n0", "n1", "n2", "n3"]
ACKING = {"n0", "n2"}  # the others never ack (lingua's agent): jobs run from assignment
CAPACITY = 2
MAX_ATTEMPTS = 3
pick_st = st.integers(0, 1_000)


class JobMachine(RuleBasedStateMachine):
    """Jobs created, placed, acknowledged, finished, taken back; nodes dropped, back, restarted,
    expired; time passing with lease timers fired as the dispatcher does. A model of which
    job holds which slot of which node registration must agree with Redis after every step.

    The model knows a session's node (its jobs go there while it is eligible), nodes that
    never ack (their jobs run from assignment), and that a node's answer ends the session's
    jobs assigned to it earlier (without a result)."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.r = sync_redis_for_tests(self.url, decode_responses=True)
        self.k = Keys("test")
        mine = self.r.keys(MINE)
        if mine:
            self.r.delete(*mine)
        self.s = Scripts(self.r, self.k, find_lua_dir())  # type: ignore[arg-type]
        self.now = NOW
        self.serial = 0
        # node -> {"gen": registration count, "conn": conn id, "connected": bool} (absent = gone)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.gens: dict[str, int] = dict.fromkeys(NODES, 0)
        # job -> {"state", "attempt", "node", "gen", "tried", "session", "seq"}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.next_index: dict[str, int] = {}
        self.pref: dict[str, str] = {}  # session -> its node
        self.seq: dict[tuple[str, int], int] = {}  # (node, gen) -> assignments so far

    def teardown(self) -> None:
        mine = self.r.keys(MINE)
        if mine:
            self.r.delete(*mine)
        self.r.close()

    def call(self, name: str, **kw: Any) -> list[Any]:
        k, a = getattr(self.s, f"{name}_args")(**kw)
        return list(self.s.script(name)(keys=k, args=a))

    # -- model helpers --------------------------------------------------------------------
    def held(self, node: str, state: str | None = None) -> int:
        """Slots the model says the node's current registration holds."""
        m = self.nodes.get(node)
        if m is None:
            return 0
        return sum(
            1
            for j in self.jobs.values()
            if j["state"] in ("assigned", "acked")
            and (state is None or j["state"] == state)
            and j["node"] == node
            and j["gen"] == m["gen"]
        )

    def live(self, state: tuple[str, ...] = ("assigned", "acked")) -> list[str]:
        return sorted(j for j, m in self.jobs.items() if m["state"] in state)

    def register(self, node: str) -> None:
        self.serial += 1
        self.now += 1  # a registration is a new incarnation only at a new instant
        conn = f"c{self.serial}"
        self.gens[node] += 1
        assert self.call(
            "register_node_v2",
            **reg(
                node,
                now_ms=self.now,
                capacity=CAPACITY,
                conn_id=conn,
                gateway_id="gw",
                acks=node in ACKING,
            ),
        ) == [1, "", ""]
        beat = self.call(
            "heartbeat_with_pool_assign",
            node_id=node,
            conn_id=conn,
            gateway_id="gw",
            now_ms=self.now,
        )
        assert beat[0] == 1
        self.nodes[node] = {"gen": self.gens[node], "conn": conn, "connected": True}

    def place(self, job: str, attempt: int) -> None:
        """select_node for ``attempt``; the model predicts whether some node has room."""
        m = self.jobs[job]
        free = [
            n
            for n, nm in self.nodes.items()
            if nm["connected"] and n not in m["tried"] and self.held(n) < CAPACITY
        ]
        own = self.pref.get(m["session"])
        own_alive = own in self.nodes and self.nodes[own]["connected"]
        reply = self.call(
            "select_node",
            job_id=job,
            attempt=attempt,
            now_ms=self.now,
            lease_ms=LEASE,
            pair_src="zh",
            pair_tgt="en",
            services=["asr"],
            policy="pack",
            candidates=8,
            wait_until_ms=0,
            retry_ms=100,
        )
        if reply[0] != 1:
            # every node busy, or every node gone (the last expired member emptied the pool)
            assert reply[0] == -4 and reply[2] == 0 and not free, (reply, free)
            assert reply[1] == "no_free_slot" or not self.nodes, reply
            self.end(job, "failed")  # as the dispatcher does: a typed error
            return
        node = reply[1]
        assert node in free, (node, free)
        if own in free:
            assert node == own, "the session's own node first"
        else:
            assert min(self.held(n) for n in free) == self.held(node), "least loaded first"
            if not own_alive:
                self.pref[m["session"]] = node  # it becomes the session's node
        gen = self.nodes[node]["gen"]
        self.seq[(node, gen)] = self.seq.get((node, gen), 0) + 1
        state = "assigned" if node in ACKING else "acked"
        assert reply[5] == state, reply
        m.update(state=state, attempt=attempt, node=node, gen=gen, seq=self.seq[(node, gen)])
        m["tried"].add(node)

    def end(self, job: str, outcome: str) -> None:
        reply = self.call(
            "job_finish", **finish_kw(job, "", attempt=0, outcome=outcome, now_ms=self.now)
        )
        assert reply[0] in (1, 3), reply
        self.jobs[job]["state"] = outcome

    def take_back(self, job: str, reason: str) -> None:
        m = self.jobs[job]
        reply = self.call(
            "job_release",
            **release_kw(
                job, m["attempt"], reason=reason, now_ms=self.now, max_attempts=MAX_ATTEMPTS
            ),
        )
        m["state"] = "queued"
        node = m["node"]
        # the node and the connection its record names (none once the record is gone)
        where = [node, "gw", self.nodes[node]["conn"]] if node in self.nodes else [node, "", ""]
        if m["attempt"] >= MAX_ATTEMPTS:
            assert reply == [2, m["attempt"], *where]
            self.end(job, "failed")
        else:
            assert reply == [1, m["attempt"] + 1, *where]
            self.place(job, m["attempt"] + 1)

    # -- rules ----------------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        for node in NODES:
            self.register(node)
        for session in ("s1", "s2"):  # the records the gateway writes (the session's node)
            self.r.hset(self.k.session(session), mapping={"gateway_id": "gw-s", "conn_id": "c"})

    @rule(session=st.sampled_from(["s1", "s2"]))
    def create_and_select(self, session: str) -> None:
        self.serial += 1
        job = f"j{self.serial}"
        index = self.next_index.get(session, 0)
        self.next_index[session] = index + 1
        kw = create_kw(job, session, index, now_ms=self.now)
        assert self.call("job_create", **kw) == [1, job]
        assert self.call("job_create", **kw) == [2, job]  # a retried request
        self.jobs[job] = {
            "state": "queued",
            "attempt": 0,
            "node": "",
            "gen": 0,
            "tried": set(),
            "session": session,
            "seq": 0,
        }
        self.place(job, 1)

    @precondition(lambda self: self.live(("assigned",)))
    @rule(pick=pick_st, stale=st.booleans())
    def ack(self, pick: int, stale: bool) -> None:
        job = self.live(("assigned",))[pick % len(self.live(("assigned",)))]
        m = self.jobs[job]
        if stale:
            reply = self.call("job_ack", **ack_kw(job, m["node"], m["attempt"] + 1))
            assert reply == [-5, "stale_attempt"]
            return
        for expected in (1, 0):  # the second is a replay
            reply = self.call("job_ack", **ack_kw(job, m["node"], m["attempt"], now_ms=self.now))
            assert reply[0] == expected, reply
        m["state"] = "acked"

    @precondition(lambda self: self.live())
    @rule(pick=pick_st, outcome=st.sampled_from(["done", "failed"]), replay=st.booleans())
    def finish(self, pick: int, outcome: str, replay: bool) -> None:
        job = self.live()[pick % len(self.live())]
        m = self.jobs[job]
        # the node has answered this job: the session's jobs that reached it before are done
        # (its gateway lists them, as it saw the order on the node's socket)
        earlier = [
            j
            for j, other in self.jobs.items()
            if other["state"] in ("assigned", "acked")
            and other["session"] == m["session"]
            and (other["node"], other["gen"]) == (m["node"], m["gen"])
            and other["seq"] < m["seq"]
        ]
        kw = finish_kw(
            job,
            m["node"],
            m["attempt"],
            outcome=outcome,
            now_ms=self.now,
            earlier=[(j, self.jobs[j]["attempt"]) for j in earlier],
        )
        reply = self.call("job_finish", **kw)
        assert reply[0] in (1, 3), reply
        m["state"] = outcome
        for j in earlier:
            self.jobs[j]["state"] = "done"
        if replay:
            # a replay writes nothing and answers the same deliveries (still in the outbox)
            again = self.call("job_finish", **kw)
            assert again[0] == 0 and again[3:] == (reply[3:] if reply[0] == 1 else []), again

    @precondition(lambda self: self.live())
    @rule(pick=pick_st, reason=st.sampled_from(["refused", "unroutable", "node_lost"]))
    def release(self, pick: int, reason: str) -> None:
        self.take_back(self.live()[pick % len(self.live())], reason)

    @precondition(lambda self: any(m["connected"] for m in self.nodes.values()))
    @rule(pick=pick_st)
    def drop(self, pick: int) -> None:
        up = sorted(n for n, m in self.nodes.items() if m["connected"])
        node = up[pick % len(up)]
        reply = self.call(
            "node_offline",
            node_id=node,
            mode="dropped",
            conn_id=self.nodes[node]["conn"],
            now_ms=self.now,
        )
        assert reply == [1, 0]
        self.nodes[node]["connected"] = False

    @precondition(lambda self: any(not m["connected"] for m in self.nodes.values()))
    @rule(pick=pick_st)
    def reconnect(self, pick: int) -> None:
        down = sorted(n for n, m in self.nodes.items() if not m["connected"])
        node = down[pick % len(down)]
        self.serial += 1
        conn = f"c{self.serial}"
        reply = self.call(
            "heartbeat_with_pool_assign",
            node_id=node,
            conn_id=conn,
            gateway_id="gw",
            now_ms=self.now,
        )
        assert reply[0] == 1
        self.nodes[node].update(conn=conn, connected=True)

    @rule(pick=pick_st, how=st.sampled_from(["graceful", "expired"]))
    def restart(self, pick: int, how: str) -> None:
        """The node leaves (a clean close, or its TTL passes and the sweep runs) and comes
        back as a new registration with empty counters; its old jobs are still out there."""
        node = NODES[pick % len(NODES)]
        if node in self.nodes:
            if how == "expired":
                self.r.delete(self.k.node(node))
            reply = self.call("node_offline", node_id=node, mode=how, now_ms=self.now)
            assert reply[0] == 1
            del self.nodes[node]
        self.register(node)

    @precondition(lambda self: self.nodes)
    @rule(pick=pick_st)
    def expire_only(self, pick: int) -> None:
        node = sorted(self.nodes)[pick % len(self.nodes)]
        self.r.delete(self.k.node(node))  # selection finds it gone before the sweeper does
        del self.nodes[node]

    @rule(ms=st.sampled_from([1, 500, LEASE, DEADLINE]))
    def tick(self, ms: int) -> None:
        """Time passes; due lease timers fire as in the dispatcher (take back, place again)."""
        self.now += ms
        due = self.call("timers_claim", now_ms=self.now, claim_ms=1_000, limit=100)
        for job in due:
            m = self.jobs[job]
            assert m["state"] in ("assigned", "acked"), (job, m)
            self.take_back(job, "ack_timeout" if m["state"] == "assigned" else "deadline")

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def slots_match_the_model(self) -> None:
        total = 0
        for node in NODES:
            h = self.r.hgetall(self.k.node(node))
            if node not in self.nodes:
                assert not h, node
                continue
            running, reserved = int(h["running"]), int(h["reserved"])
            assert 0 <= running and 0 <= reserved, (node, h)
            assert running + reserved <= int(h["capacity"]), (node, h)  # invariant 1
            assert (reserved, running) == (
                self.held(node, "assigned"),
                self.held(node, "acked"),
            ), node
            total += running + reserved
        # invariant 2: every reserved or running slot belongs to one live job attempt
        assert total == sum(self.held(n) for n in self.nodes)
        assert total == sum(
            1
            for m in self.jobs.values()
            if m["state"] in ("assigned", "acked")
            and m["node"] in self.nodes
            and m["gen"] == self.nodes[m["node"]]["gen"]
        )

    @invariant()
    def leases_and_jobs_agree(self) -> None:
        for node in NODES:
            for job in self.r.smembers(self.k.node_jobs(node)):
                state, holder = self.r.hmget(self.k.job(job), "state", "node_id")
                assert state in ("assigned", "acked") and holder == node, (node, job, state)
        for job, m in self.jobs.items():
            h = self.r.hmget(self.k.job(job), "state", "attempt", "node_id")
            assert h[0] == m["state"], (job, h, m)
            if m["state"] in ("assigned", "acked"):
                assert (int(h[1]), h[2]) == (m["attempt"], m["node"])
                assert job in self.r.smembers(self.k.node_jobs(m["node"]))
        timers = set(self.r.zrange(self.k.timers, 0, -1))
        assert timers == set(self.live()), "a timer for exactly the jobs holding a lease"

    @invariant()
    def idle_means_zero(self) -> None:
        if self.live():
            return
        for node in self.nodes:
            assert self.r.hmget(self.k.node(node), "reserved", "running") == ["0", "0"]


@pytest.mark.timeout(600)  # passing takes seconds; shrinking a failure can take minutes
def test_slot_accounting_holds_for_any_event_sequence(redis_url: str) -> None:
    JobMachine.url = redis_url
    run_state_machine_as_test(
        JobMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- utterances that never became jobs -------------------------------------------------------
def fail_kw(index: int, now_ms: int = NOW, session_id: str = "s1") -> dict[str, Any]:
    return {
        "session_id": session_id,
        "utterance_index": index,
        "now_ms": now_ms,
        "payload": {"type": "error", "code": "SCHEDULER_DEPENDENCY_DOWN", "message": f"u{index}"},
        "gap_ms": GAP,
        "session_ttl_ms": SESSION_TTL,
    }


async def test_an_unqueued_utterance_takes_its_place_in_the_order(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """0 is a job, 1 could not be queued, 2 is a job: the client gets 0, 1, 2 in order, once
    each, and no hole is left for the gap timeout."""
    await join_single_slot(scripts, 2)
    await open_session(redis, keys)
    await dispatch(scripts, "j0", index=0)
    await dispatch(scripts, "j2", index=2)
    assert indexes(await scripts.job_finish(**finish_kw("j2", "n2"))) == []
    d = await scripts.utterance_fail(**fail_kw(1))
    assert (d.code, d.gateway_id, d.conn_id, d.items) == (1, "gw-s", "cs-s1", [])  # 0 missing
    d = await scripts.job_finish(**finish_kw("j0", "n1"))
    assert [(i, p["type"]) for i, p in d.items] == [
        (0, "translation_result"),
        (1, "error"),
        (2, "translation_result"),
    ]
    assert not await redis.exists(keys.gaps)
    # answered: a second failure of 1, or one of 0, writes nothing
    before = await snapshot(redis)
    assert await raw(scripts, "utterance_fail", fail_kw(1)) == [0, ""]
    assert await raw(scripts, "utterance_fail", fail_kw(0)) == [0, ""]
    assert await snapshot(redis) == before


async def test_an_unqueued_utterance_never_overwrites_a_waiting_answer(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await open_session(redis, keys)
    await dispatch(scripts, "j1", index=1)
    assert indexes(await scripts.job_finish(**finish_kw("j1", "n1"))) == []  # waits for 0
    before = await snapshot(redis)
    assert await raw(scripts, "utterance_fail", fail_kw(1)) == [0, ""]  # 1 has its answer
    assert await snapshot(redis) == before
    d = await scripts.utterance_fail(**fail_kw(0))
    assert [(i, p["type"]) for i, p in d.items] == [(0, "error"), (1, "translation_result")]


async def test_an_unqueued_utterance_of_an_unknown_session_writes_nothing(
    redis: Redis, keys: Keys, scripts: Scripts
):
    assert await raw(scripts, "utterance_fail", fail_kw(0, session_id="gone")) == [-6, ""]
    assert await redis.keys(MINE) == []
    await open_session(redis, keys)
    before = await snapshot(redis)
    for field, bad in (
        ("utterance_index", -1),
        ("now_ms", 0),
        ("gap_ms", 0),
        ("session_ttl_ms", 0),
        ("session_id", ""),
    ):
        reply = await raw(scripts, "utterance_fail", {**fail_kw(0), field: bad})
        assert reply == [-1, field]
    kw = fail_kw(0)
    keys_, args = scripts.utterance_fail_args(**kw)
    args[3] = "not json"
    assert await scripts.script("utterance_fail")(keys=keys_, args=args) == [-1, b"payload"]
    assert await snapshot(redis) == before
