"""select_node.lua against a real Redis: choice, reservation and every key it writes (J3, J4, J8).

Nodes are set up the way production does it (register_node_v2 + heartbeat_with_pool_assign);
a node's load is changed by writing its counters and letting a heartbeat refresh its score.
Where a test needs a score that lags the record (the record is the truth selection checks),
it writes the record alone and says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts, Selection
from lingua_shared.testing import key_snapshot, node_registration

NOW = 1_700_000_000_000
TTL = 600_000
LEASE = 3_000
MINE = Keys("test").prefix + "*"  # the fixtures' cell; other suites may share the database
ZH_EN = "en_zh:eu:a100:0"


# --- set-up helpers --------------------------------------------------------------------------
def reg(node_id: str, **over: Any) -> dict[str, Any]:
    return node_registration(
        node_id,
        **{"now_ms": NOW, "ttl_ms": TTL, "gateway_id": f"gw-{node_id}", "capacity": 2, **over},
    )


async def join(scripts: Scripts, node_id: str, max_shard_size: int = 256, **over: Any) -> None:
    await scripts.register_node_v2(**reg(node_id, **over))
    r = await scripts.heartbeat_with_pool_assign(
        node_id=node_id,
        conn_id=f"c-{node_id}",
        gateway_id=f"gw-{node_id}",
        now_ms=NOW,
        max_shard_size=max_shard_size,
    )
    assert r.alive


async def set_load(
    redis: Redis, keys: Keys, scripts: Scripts, node_id: str, running: int = 0, reserved: int = 0
) -> None:
    """Give a node some load and let a heartbeat move its score accordingly."""
    await redis.hset(keys.node(node_id), mapping={"running": running, "reserved": reserved})
    r = await scripts.heartbeat_with_pool_assign(
        node_id=node_id, conn_id=f"c-{node_id}", gateway_id=f"gw-{node_id}", now_ms=NOW
    )
    assert r.alive


async def open_session(redis: Redis, keys: Keys, session_id: str) -> None:
    await redis.hset(
        keys.session(session_id), mapping={"gateway_id": "gw-s", "conn_id": f"cs-{session_id}"}
    )


async def new_job(scripts: Scripts, job_id: str, session_id: str = "s1", index: int = 0) -> None:
    r = await scripts.job_create(
        request_key=f"{session_id}:{index}",
        job_id=job_id,
        now_ms=NOW,
        ttl_ms=TTL,
        fields={"session_id": session_id, "utterance_index": index},
        audio="QUJD",
    )
    assert r.code == 1


def sel(job_id: str, attempt: int = 1, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "job_id": job_id,
        "attempt": attempt,
        "now_ms": NOW + 10,
        "lease_ms": LEASE,
        "pair_src": "zh",
        "pair_tgt": "en",
        "services": ["asr", "semantic"],
        "policy": "pack",
        "candidates": 8,
        "wait_until_ms": 0,
        "retry_ms": 100,
    }
    kw.update(over)
    return kw


async def select(scripts: Scripts, job_id: str, attempt: int = 1, **over: Any) -> Selection:
    return await scripts.select_node(**sel(job_id, attempt, **over))


async def release(scripts: Scripts, job_id: str, attempt: int) -> None:
    r = await scripts.job_release(
        job_id=job_id, attempt=attempt, reason="refused", now_ms=NOW + 20, max_attempts=9
    )
    assert r.code == 1


# --- reading helpers -------------------------------------------------------------------------
async def snapshot(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    return await key_snapshot(redis)


def decode(reply: list[Any]) -> list[Any]:
    return [x.decode() if isinstance(x, bytes) else x for x in reply]


async def raw(scripts: Scripts, kw: dict[str, Any]) -> list[Any]:
    k, a = scripts.select_node_args(**kw)
    return decode(await scripts.script("select_node")(keys=k, args=a))


async def zmembers(redis: Redis, key: str) -> dict[str, float]:
    return {m.decode(): s for m, s in await redis.zrange(key, 0, -1, withscores=True)}


async def smembers(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(key)}


async def hash_of(redis: Redis, key: str) -> dict[str, str]:
    return {f.decode(): v.decode() for f, v in (await redis.hgetall(key)).items()}


async def counts(redis: Redis, key: str) -> dict[str, int]:
    return {f: int(v) for f, v in (await hash_of(redis, key)).items()}


async def slots(redis: Redis, keys: Keys, node_id: str) -> tuple[int, int]:
    running, reserved = await redis.hmget(keys.node(node_id), "running", "reserved")
    return int(running), int(reserved)


# --- choice and reservation ------------------------------------------------------------------
async def test_least_loaded_node_is_reserved_with_every_key(
    redis: Redis, keys: Keys, scripts: Scripts
):
    big = "en_ja_zh:eu:a100:0"
    await join(scripts, "n1", capacity=3, lang_sets=[["en", "zh"], ["en", "ja", "zh"]])
    await join(scripts, "n2", capacity=4)
    await join(scripts, "n3", capacity=4, lang_sets=[["en", "ja", "zh"]])
    await set_load(redis, keys, scripts, "n2", running=1)  # 0.25
    await set_load(redis, keys, scripts, "n3", running=2)  # 0.5
    await open_session(redis, keys, "s1")
    for i in range(3):
        await new_job(scripts, f"j{i}", f"s{i + 1}")  # one session each: no affinity at play

    r = await select(scripts, "j0")
    assert (r.code, r.node_id, r.gateway_id, r.conn_id) == (1, "n1", "gw-n1", "c-n1")
    assert r.shard_id in (ZH_EN, big)
    assert await slots(redis, keys, "n1") == (0, 1)
    # the new score is in every shard the node is in, not only the one it was chosen from
    assert (await zmembers(redis, keys.pool(ZH_EN)))["n1"] == pytest.approx(1 / 3)
    assert (await zmembers(redis, keys.pool(big)))["n1"] == pytest.approx(1 / 3)
    assert await smembers(redis, keys.node_jobs("n1")) == {"j0"}
    # the lease replaced j0's creation rescue timer (NOW + 1 s)
    assert (await zmembers(redis, keys.timers))["j0"] == NOW + 10 + LEASE
    job = await hash_of(redis, keys.job("j0"))
    assert {
        k: job[k] for k in ("state", "attempt", "node_id", "shard", "assigned_at", "tried")
    } == {
        "state": "assigned",
        "attempt": "1",
        "node_id": "n1",
        "shard": r.shard_id,
        "assigned_at": str(NOW + 10),
        "tried": "n1",
    }
    assert (await hash_of(redis, keys.session("s1")))["pref_shard"] == r.shard_id

    # n1 1/3 > n2 0.25: n2; then n1 1/3 < n2 0.5 = n3 0.5: n1
    assert [(await select(scripts, f"j{i}")).node_id for i in (1, 2)] == ["n2", "n1"]
    assert [await slots(redis, keys, n) for n in ("n1", "n2", "n3")] == [(0, 2), (1, 1), (2, 0)]
    assert await zmembers(redis, keys.pool(ZH_EN)) == pytest.approx({"n1": 2 / 3, "n2": 0.5})
    assert await zmembers(redis, keys.pool(big)) == pytest.approx({"n1": 2 / 3, "n3": 0.5})
    assert await smembers(redis, keys.node_jobs("n1")) == {"j0", "j2"}
    assert await smembers(redis, keys.node_jobs("n2")) == {"j1"}
    assert not await redis.exists(keys.node_jobs("n3"))
    assert await zmembers(redis, keys.timers) == {j: NOW + 10 + LEASE for j in ("j0", "j1", "j2")}
    assert not await redis.exists(keys.exclusions)


async def test_superset_language_sets_serve_a_pair(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "small", lang_sets=[["en", "zh"]], capacity=4)
    await join(scripts, "big", lang_sets=[["zh", "ja", "en"]], capacity=4)
    await set_load(redis, keys, scripts, "big", running=3)
    for i in range(4):
        await new_job(scripts, f"j{i}", index=i)

    assert (await select(scripts, "j0", pair_src="zh", pair_tgt="en")).node_id == "small"
    assert (await select(scripts, "j1", pair_src="en", pair_tgt="zh")).node_id == "small"
    # only the three-language node covers ja: it is chosen however loaded
    r = await select(scripts, "j2", pair_src="ja", pair_tgt="en")
    assert (r.code, r.node_id, r.shard_id) == (1, "big", "en_ja_zh:eu:a100:0")
    r = await select(scripts, "j3", pair_src="en", pair_tgt="ja")
    assert (r.code, r.reason) == (-4, "no_free_slot")  # big is now full (3 + 1 of 4)


async def test_no_covering_pool_counts_the_pair_and_writes_nothing_else(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await new_job(scripts, "j1")
    before = await snapshot(redis)
    for _ in range(2):
        r = await select(scripts, "j1", pair_src="fr", pair_tgt="en", wait_until_ms=NOW + 9_000)
        assert (r.code, r.reason, r.waiting) == (-4, "no_covering_pool", False)
    assert await counts(redis, keys.unserved) == {"fr:en": 2}
    after = await snapshot(redis)
    del after[keys.unserved.encode()]
    assert after == before  # the job does not wait: no pool can ever serve it


async def test_no_free_slot_waits_only_until_wait_until(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1", capacity=1)
    for i in range(3):
        await new_job(scripts, f"j{i}", index=i)
    assert (await select(scripts, "j0")).node_id == "n1"

    # a deadline in the future: the job waits, a timer retries it after retry_ms
    r = await select(scripts, "j1", wait_until_ms=NOW + 5_000, retry_ms=250)
    assert (r.code, r.reason, r.waiting) == (-4, "no_free_slot", True)
    job = await hash_of(redis, keys.job("j1"))
    assert (job["state"], job["wait_until"], job["attempt"]) == ("waiting", str(NOW + 5_000), "0")
    assert (await zmembers(redis, keys.timers))["j1"] == NOW + 10 + 250

    # no deadline, or one already passed: no waiting, the job is left as it was
    for wait_until in (0, NOW + 10):
        r = await select(scripts, "j2", wait_until_ms=wait_until)
        assert (r.code, r.reason, r.waiting) == (-4, "no_free_slot", False)
    assert (await hash_of(redis, keys.job("j2")))["state"] == "queued"
    # select set no retry timer; only the creation's rescue timer is there
    assert (await zmembers(redis, keys.timers))["j2"] == NOW + 1_000
    assert await counts(redis, keys.exclusions) == {"pool_full": 3}

    # once the slot is free, the waiting job gets it
    await release(scripts, "j0", 1)
    r = await select(scripts, "j1", now_ms=NOW + 300, wait_until_ms=NOW + 5_000)
    assert (r.code, r.node_id) == (1, "n1")
    assert (await hash_of(redis, keys.job("j1")))["state"] == "assigned"
    assert (await zmembers(redis, keys.timers))["j1"] == NOW + 300 + LEASE


# --- eligibility -----------------------------------------------------------------------------
async def test_every_exclusion_reason_is_counted(redis: Redis, keys: Keys, scripts: Scripts):
    # all in one shard; every excluded node sorts before the one that is eligible
    await join(scripts, "c-tried")
    await new_job(scripts, "j1")
    assert (await select(scripts, "j1")).node_id == "c-tried"
    await release(scripts, "j1", 1)
    for n in ("a-expired", "b-unconnected", "d-full", "e-cooling", "z-free"):
        await join(scripts, n, capacity=4)
    await set_load(redis, keys, scripts, "d-full", reserved=1)  # 0.25
    await set_load(redis, keys, scripts, "z-free", running=2)  # 0.5
    # d-full re-registers with capacity 1: its record is full, its score (0.25) lags
    await scripts.register_node_v2(**reg("d-full", capacity=1))
    await redis.delete(keys.node("a-expired"))  # its TTL passed
    await redis.hset(keys.node("b-unconnected"), "connected", "0")  # record ahead of score
    await redis.hset(keys.node("e-cooling"), "unavail:asr", NOW + 60_000)  # likewise

    r = await select(scripts, "j1", attempt=2)
    assert (r.code, r.node_id) == (1, "z-free")
    assert await counts(redis, keys.exclusions) == {
        "expired": 1,
        "not_connected": 1,
        "already_tried": 1,
        "no_free_slot": 1,
        "service_unavailable": 1,
    }
    assert (await hash_of(redis, keys.job("j1")))["tried"] == "c-tried,z-free"
    # the expired member was taken out of the shard on the way, with the shard's count
    assert "a-expired" not in await zmembers(redis, keys.pool(ZH_EN))
    assert await counts(redis, keys.pool_group("en_zh", "eu", "a100")) == {"0": 5}
    # the records ahead of their scores were scored again: read past once, never again
    scores = await zmembers(redis, keys.pool(ZH_EN))
    assert scores["b-unconnected"] >= 1000 and 1 <= scores["d-full"] < 2
    assert 2 <= scores["e-cooling"] < 3  # the band of nodes cooling asr
    await redis.delete(keys.exclusions)
    await new_job(scripts, "j2", index=1)
    assert (await select(scripts, "j2")).node_id == "c-tried"  # idle, and new to j2
    assert await counts(redis, keys.exclusions) == {}


async def test_expired_member_is_removed_lazily_and_the_sweep_agrees(
    redis: Redis, keys: Keys, scripts: Scripts
):
    group = keys.pool_group("en_zh", "eu", "a100")
    await join(scripts, "n1")
    await join(scripts, "n2")
    await set_load(redis, keys, scripts, "n2", running=1)
    await new_job(scripts, "j1")
    await redis.delete(keys.node("n1"))  # the TTL passed; the sweeper has not run yet

    r = await select(scripts, "j1")
    assert (r.code, r.node_id) == (1, "n2")
    assert await zmembers(redis, keys.pool(ZH_EN)) == {"n2": 1.0}
    assert await counts(redis, keys.exclusions) == {"expired": 1}
    assert await counts(redis, group) == {"0": 1}

    # the sweep that follows removes the rest without counting the member a second time
    res = await scripts.node_offline(node_id="n1", mode="expired", now_ms=NOW + TTL)
    assert res.code == 1
    assert await counts(redis, group) == {"0": 1}
    assert not await redis.exists(keys.node_pools("n1"))
    assert await smembers(redis, keys.nodes_all) == {"n2"}


async def test_last_expired_member_takes_its_shard_out_of_the_index(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await new_job(scripts, "j1")
    await redis.delete(keys.node("n1"))
    r = await select(scripts, "j1")
    assert (r.code, r.reason) == (-4, "no_free_slot")
    assert not await redis.exists(keys.pool(ZH_EN))
    assert not await redis.exists(keys.pool_group("en_zh", "eu", "a100"))
    assert await smembers(redis, keys.pools_index) == set()
    assert await smembers(redis, keys.pair("zh", "en")) == set()
    # the next request for the pair is known to be unserved, not "every node is busy"
    r = await select(scripts, "j1")
    assert (r.code, r.reason) == (-4, "no_covering_pool")

    # a new node of that language set gets a fresh shard 0 with a count of 1
    await join(scripts, "n3")
    assert await counts(redis, keys.pool_group("en_zh", "eu", "a100")) == {"0": 1}
    assert (await select(scripts, "j1")).node_id == "n3"


async def test_service_in_cooldown_is_skipped_until_the_cooldown_ends(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1", capacity=4)
    await join(scripts, "n2", capacity=4)
    await set_load(redis, keys, scripts, "n2", running=2)
    for i in range(4):
        await new_job(scripts, f"j{i}", index=i)
    await scripts.service_cooldown(node_id="n1", service="tts", until_ms=NOW + 1_000)

    needs_tts = ["asr", "semantic", "tts"]
    # n1 sits in the band of nodes cooling tts: unrestricted nodes go first, and a job
    # needing tts never reads n1 at all
    assert (await select(scripts, "j0", services=needs_tts)).node_id == "n2"
    assert (await select(scripts, "j1", services=["asr"])).node_id == "n2"  # n2 now full
    assert (await select(scripts, "j2", services=needs_tts)).code == -4
    assert (await select(scripts, "j2", services=["asr"])).node_id == "n1"  # tts not needed
    # no unrestricted node free (counted as pool_full), and nothing cooling was read
    assert await counts(redis, keys.exclusions) == {"pool_full": 2}
    # the cool-down ends at until_ms: from then on n1 serves tts again
    r = await select(scripts, "j3", services=needs_tts, now_ms=NOW + 1_000)
    assert r.node_id == "n1"
    assert await counts(redis, keys.exclusions) == {"pool_full": 3}


async def test_redispatch_skips_nodes_already_tried(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1", capacity=4)
    await join(scripts, "n2", capacity=4)
    await set_load(redis, keys, scripts, "n2", running=3)
    await new_job(scripts, "j1")

    assert (await select(scripts, "j1", 1)).node_id == "n1"
    await release(scripts, "j1", 1)
    assert await slots(redis, keys, "n1") == (0, 0)
    r = await select(scripts, "j1", 2)  # n1 is idle again, but this job failed there
    assert (r.code, r.node_id) == (1, "n2")
    job = await hash_of(redis, keys.job("j1"))
    assert (job["attempt"], job["node_id"], job["tried"]) == ("2", "n2", "n1,n2")
    assert await counts(redis, keys.exclusions) == {"already_tried": 1}
    await release(scripts, "j1", 2)
    r = await select(scripts, "j1", 3)
    assert (r.code, r.reason) == (-4, "no_free_slot")
    assert await counts(redis, keys.exclusions) == {"already_tried": 3}
    assert [await slots(redis, keys, n) for n in ("n1", "n2")] == [(0, 0), (3, 0)]


async def test_unconnected_and_unknown_nodes_and_jobs(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1")
    await new_job(scripts, "j1")
    await scripts.node_offline(node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 5)
    r = await select(scripts, "j1")
    assert (r.code, r.reason) == (-4, "no_free_slot")  # its score is out of the range read
    assert await counts(redis, keys.exclusions) == {"pool_full": 1}
    r = await select(scripts, "ghost")
    assert (r.code, r.reason) == (-6, "")

    # back on a new connection: selectable again
    await scripts.heartbeat_with_pool_assign(
        node_id="n1", conn_id="c2", gateway_id="gw-9", now_ms=NOW + 6
    )
    r = await select(scripts, "j1")
    assert (r.code, r.node_id, r.gateway_id, r.conn_id) == (1, "n1", "gw-9", "c2")


# --- affinity and policies -------------------------------------------------------------------
async def test_pack_keeps_a_session_on_its_shard_and_spills_when_full(
    redis: Redis, keys: Keys, scripts: Scripts
):
    eu, us = ZH_EN, "en_zh:us:a100:0"
    await join(scripts, "a1", capacity=2)
    await open_session(redis, keys, "s1")
    for i in range(5):
        await new_job(scripts, f"j{i}", index=i)
    assert (await select(scripts, "j0")).shard_id == eu
    assert (await hash_of(redis, keys.session("s1")))["pref_shard"] == eu

    await join(scripts, "b1", capacity=2, region="us")  # idle, in another shard
    r = await select(scripts, "j1")
    assert (r.node_id, r.shard_id) == ("a1", eu)  # affinity beats the less loaded b1
    r = await select(scripts, "j2")
    assert (r.node_id, r.shard_id) == ("b1", us)  # a1 is full: soft affinity spills
    assert (await hash_of(redis, keys.session("s1")))["pref_shard"] == eu  # set once

    await release(scripts, "j0", 1)
    assert (await select(scripts, "j3")).node_id == "a1"  # back to its shard
    assert (await select(scripts, "j4")).node_id == "b1"


async def test_pack_stops_at_an_idle_node_and_reads_no_further_shard(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Nothing beats an idle node (score 0), so pack reads no other shard once it has one:
    its cost stays that of one shard however many shards cover the pair."""
    regions = ("eu", "us", "ap", "sa")
    tried = ",".join(f"a-tried-{region}" for region in regions)
    for region in regions:
        # in every shard a node the job already tried sorts before an idle one: each shard
        # read counts one already_tried exclusion
        await join(scripts, f"a-tried-{region}", capacity=4, region=region)
        await join(scripts, f"b-idle-{region}", capacity=4, region=region)
    assert await redis.scard(keys.pair("zh", "en")) == len(regions)
    await new_job(scripts, "j0", "s-none")  # no session record: no preferred shard
    await redis.hset(keys.job("j0"), "tried", tried)
    r = await select(scripts, "j0")
    assert r.code == 1
    assert r.node_id == f"b-idle-{r.shard_id.split(':')[1]}"
    assert await counts(redis, keys.exclusions) == {"already_tried": 1}

    # a loaded best is no reason to stop: every other shard is read for a lower score
    await release(scripts, "j0", 1)
    for region in regions:
        await set_load(redis, keys, scripts, f"b-idle-{region}", running=2)  # 0.5
    await set_load(redis, keys, scripts, "b-idle-sa", running=1)  # 0.25: the least loaded
    await redis.delete(keys.exclusions)
    await new_job(scripts, "j1", "s-none", index=1)
    await redis.hset(keys.job("j1"), "tried", tried)
    assert (await select(scripts, "j1")).node_id == "b-idle-sa"
    assert await counts(redis, keys.exclusions) == {"already_tried": len(regions)}


async def test_spread_ignores_affinity_and_balances_equal_nodes(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Spread places sessions, not jobs: four sessions land two per node; each session's
    later jobs stay on its node (lingua's nodes keep per-session state)."""
    await join(scripts, "a1", capacity=8)
    await join(scripts, "b1", capacity=8, region="us")
    for policy in ("pack", "spread"):
        sessions = [f"{policy}-{s}" for s in range(4)]
        for session in sessions:
            await open_session(redis, keys, session)
            await redis.hset(keys.session(session), "pref_shard", ZH_EN)
            await new_job(scripts, f"{session}-0", session, 0)
        first = [(await select(scripts, f"{s}-0", policy=policy)).node_id for s in sessions]
        if policy == "pack":
            assert first == ["a1"] * 4
        else:
            assert sorted(first) == ["a1", "a1", "b1", "b1"]
        for session, node in zip(sessions, first, strict=True):
            await new_job(scripts, f"{session}-1", session, 1)
            assert (await select(scripts, f"{session}-1", policy=policy)).node_id == node
        for session in sessions:
            for i in range(2):
                await release(scripts, f"{session}-{i}", 1)
        assert [await slots(redis, keys, n) for n in ("a1", "b1")] == [(0, 0), (0, 0)]


async def test_spread_rotates_among_equally_loaded_nodes(
    redis: Redis, keys: Keys, scripts: Scripts
):
    for n in ("n1", "n2", "n3"):
        await join(scripts, n, capacity=4)
    chosen: dict[str, set[str]] = {"pack": set(), "spread": set()}
    for policy in chosen:
        for i in range(12):
            job = f"{policy}-{i}"
            await new_job(scripts, job, job, 0)  # spread takes turns by session
            r = await select(scripts, job, policy=policy)
            chosen[policy].add(r.node_id)
            await release(scripts, job, 1)  # every node is idle again for the next job
    assert chosen["pack"] == {"n1"}  # pack: the first of equals, every time
    assert len(chosen["spread"]) >= 2


async def test_a_stale_preferred_shard_is_skipped_quietly(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await open_session(redis, keys, "s1")
    await redis.hset(keys.session("s1"), "pref_shard", "en_zh:gone:a100:0")
    await new_job(scripts, "j1")
    assert (await select(scripts, "j1")).node_id == "n1"
    assert not await redis.exists(keys.exclusions)
    assert (await hash_of(redis, keys.session("s1")))["pref_shard"] == "en_zh:gone:a100:0"


# --- atomicity, replay, bounded cost ---------------------------------------------------------
async def test_fifty_concurrent_selects_take_exactly_the_ten_free_slots(
    redis: Redis, keys: Keys, scripts: Scripts
):
    nodes = [f"n{i}" for i in range(5)]
    for n in nodes:
        await join(scripts, n, capacity=3)
    await set_load(redis, keys, scripts, "n0", running=1)
    await set_load(redis, keys, scripts, "n1", running=2)
    await set_load(redis, keys, scripts, "n2", reserved=1, running=1)
    # free: n0 2, n1 1, n2 1, n3 3, n4 3 = 10
    for i in range(50):
        await new_job(scripts, f"j{i}", index=i)

    results = await asyncio.gather(*(select(scripts, f"j{i}") for i in range(50)))
    won = [r for r in results if r.code == 1]
    assert len(won) == 10
    assert {(r.code, r.reason, r.waiting) for r in results if r.code != 1} == {
        (-4, "no_free_slot", False)
    }
    for n in nodes:
        running, reserved = await slots(redis, keys, n)
        capacity = int(await redis.hget(keys.node(n), "capacity"))
        assert running + reserved == capacity, n
        assert await redis.zscore(keys.pool(ZH_EN), n) == pytest.approx(1.0)
    holders = {r.node_id: set[str]() for r in won}
    for i, r in enumerate(results):
        if r.code == 1:
            holders[r.node_id].add(f"j{i}")
    for n in nodes:
        assert await smembers(redis, keys.node_jobs(n)) == holders.get(n, set())
    timers = await zmembers(redis, keys.timers)
    # 10 leases; the 40 losers keep the rescue timer their creation set (NOW + 1 s)
    assert sum(1 for t in timers.values() if t != NOW + 1_000) == 10


async def test_a_replayed_select_reserves_once(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1", capacity=4)
    await join(scripts, "n2", capacity=4)
    await new_job(scripts, "j1")
    first = await raw(scripts, sel("j1", 1))
    after_first = await snapshot(redis)
    again = await raw(scripts, sel("j1", 1, now_ms=NOW + 50))  # redis-py retried it
    assert again == first and first[:4] == [1, "n1", "gw-n1", "c-n1"]
    assert await snapshot(redis) == after_first
    assert [await slots(redis, keys, n) for n in ("n1", "n2")] == [(0, 1), (0, 0)]

    # an older attempt, or one that is already running, is not waiting for a node
    await release(scripts, "j1", 1)
    assert (await select(scripts, "j1", 2)).node_id == "n2"
    r = await select(scripts, "j1", 1)
    assert (r.code, r.reason) == (-5, "assigned")
    ack = await scripts.job_ack(job_id="j1", attempt=2, node_id="n2", now_ms=NOW, deadline_ms=9)
    assert ack.code == 1
    r = await select(scripts, "j1", 2)
    assert (r.code, r.reason) == (-5, "acked")
    assert [await slots(redis, keys, n) for n in ("n1", "n2")] == [(0, 0), (1, 0)]


async def pipelined(scripts: Scripts, name: str, calls: list[dict[str, Any]]) -> list[Any]:
    """Many calls of one script in one round trip (a thousand nodes join in a blink)."""
    script = scripts.script(name)
    build = getattr(scripts, f"{name}_args")
    async with scripts.redis.pipeline(transaction=False) as pipe:
        for kw in calls:
            k, a = build(**kw)
            await script(keys=k, args=a, client=pipe)
        return await pipe.execute()  # type: ignore[no-any-return]


async def test_only_candidates_members_per_shard_are_examined(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Selection reads a page of ``candidates`` members of a shard, however large it is (J4),
    and nodes that cannot take the job never hide free ones behind them."""
    nodes = [f"n{i:04d}" for i in range(1_000)]
    await pipelined(scripts, "register_node_v2", [reg(n) for n in nodes])
    beats = [
        {
            "node_id": n,
            "conn_id": f"c-{n}",
            "gateway_id": f"gw-{n}",
            "now_ms": NOW,
            "max_shard_size": 2_000,
        }
        for n in nodes
    ]
    assert {r[0] for r in await pipelined(scripts, "heartbeat_with_pool_assign", beats)} == {1}
    assert await redis.zcard(keys.pool(ZH_EN)) == 1_000
    await new_job(scripts, "j0")
    r = await select(scripts, "j0")
    assert (r.code, r.node_id) == (1, "n0000")  # lowest score, then lowest id
    await release(scripts, "j0", 1)

    # all but the last three (in the shard's order) cannot take a job needing asr
    cool = [{"node_id": n, "service": "asr", "until_ms": NOW + 60_000} for n in nodes[:-3]]
    await pipelined(scripts, "service_cooldown", cool)
    await redis.delete(keys.exclusions)
    for i, candidates in enumerate((8, 64)):
        # the cooling nodes sit in their own band: the free ones are the first read
        await new_job(scripts, f"pack{i}", index=10 + i)
        r = await select(scripts, f"pack{i}", candidates=candidates)
        assert r.code == 1 and r.node_id in nodes[-3:]
        await new_job(scripts, f"spread{i}", index=20 + i)
        r = await select(scripts, f"spread{i}", candidates=candidates, policy="spread")
        assert r.code == 1 and r.node_id in nodes[-3:]
    assert not await redis.exists(keys.exclusions)  # not one node read past
    # the three hold 4 of their 6 slots; a job not needing asr takes a free one of them first
    # (unrestricted nodes go first), then the cooling band
    await new_job(scripts, "j9", index=9)
    r = await select(scripts, "j9", services=["semantic"])
    assert r.code == 1 and r.node_id in nodes[-3:]
    await new_job(scripts, "j8", index=8)
    r = await select(scripts, "j8", services=["semantic"])
    assert r.code == 1 and r.node_id in nodes[-3:]
    await new_job(scripts, "j7", index=7)
    r = await select(scripts, "j7", services=["semantic"])
    assert (r.code, r.node_id) == (1, "n0000")


# --- validation ------------------------------------------------------------------------------
INVALID: list[tuple[str, Any, str]] = [
    ("job_id", "", "job_id"),
    ("job_id", "a:b", "job_id"),
    ("job_id", "j" * 65, "job_id"),
    ("attempt", 0, "attempt"),
    ("attempt", -1, "attempt"),
    ("attempt", 1.5, "attempt"),
    ("attempt", "first", "attempt"),
    ("now_ms", 0, "now_ms"),
    ("now_ms", "now", "now_ms"),
    ("now_ms", float("inf"), "now_ms"),
    ("now_ms", 10**30, "now_ms"),
    ("lease_ms", 0, "lease_ms"),
    ("lease_ms", -5, "lease_ms"),
    ("pair_src", "", "pair_src"),
    ("pair_src", "ZH", "pair_src"),
    ("pair_src", "z", "pair_src"),
    ("pair_tgt", "zh", "pair_tgt"),  # same as the source
    ("pair_tgt", "e:n", "pair_tgt"),
    ("services", "asr", "services"),
    ("services", 3, "services"),
    ("services", [1], "services"),
    ("services", [{"type": "asr"}], "services"),
    ("services", ["ASR:x"], "services"),
    ("services", [f"svc{i}" for i in range(17)], "services"),
    ("policy", "", "policy"),
    ("policy", "random", "policy"),
    ("candidates", 0, "candidates"),
    ("candidates", 65, "candidates"),
    ("candidates", "all", "candidates"),
    ("wait_until_ms", -1, "wait_until_ms"),
    ("wait_until_ms", "soon", "wait_until_ms"),
    ("retry_ms", 0, "retry_ms"),
    ("retry_ms", 2.5, "retry_ms"),
]


@pytest.mark.parametrize(
    ("arg", "value", "field"), INVALID, ids=[f"{a}={v!r}"[:40] for a, v, _ in INVALID]
)
async def test_invalid_input_is_rejected_before_any_write(
    redis: Redis, keys: Keys, scripts: Scripts, arg: str, value: Any, field: str
):
    await join(scripts, "n1")
    await join(scripts, "n2")
    await open_session(redis, keys, "s1")
    await new_job(scripts, "j1")
    await redis.delete(keys.node("n1"))  # an expired member a scan would remove
    before = await snapshot(redis)
    kw = sel("j1", wait_until_ms=NOW + 1_000)
    kw[arg] = value
    assert await raw(scripts, kw) == [-1, field]
    assert await snapshot(redis) == before
    with pytest.raises(ScriptRejected) as exc:
        await scripts.select_node(**kw)
    assert exc.value.details == {"field": field}
    assert await snapshot(redis) == before


async def test_a_missing_pair_index_is_rebuilt_by_the_first_select(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Pools written before the pair index existed (or an index a shard left) are indexed by
    the first select of the pair, once; from then on every score write keeps the index."""
    await join(scripts, "n1")
    await join(scripts, "n2", region="us")
    await set_load(redis, keys, scripts, "n1", running=1)
    index = keys.pair_best("zh", "en")
    await redis.delete(index)
    await redis.zadd(index, {"en_zh:gone:a100:0": 0})  # a shard that no longer exists
    await new_job(scripts, "j1")
    r = await select(scripts, "j1")
    assert (r.code, r.node_id) == (1, "n2")  # the idle one: the index was right at once
    assert await zmembers(redis, index) == {
        "en_zh:eu:a100:0": 0.5,
        "en_zh:us:a100:0": 0.5,  # n2 now holds one slot of two
    }
