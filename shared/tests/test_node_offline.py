"""node_offline.lua against a real Redis: graceful, dropped and expired (N4, N6, invariant 3)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts
from lingua_shared.testing import key_snapshot, node_beat, node_registration

NOW = 1_700_000_000_000
TTL = 30_000
MINE = Keys("test").prefix + "*"  # the fixtures' cell; other suites may share the database
SMALL, BIG = "en_zh:eu:a100:0", "en_ja_zh:eu:a100:0"


def reg(node_id: str = "n1", **over: Any) -> dict[str, Any]:
    return node_registration(node_id, **{"now_ms": NOW, "ttl_ms": TTL, **over})


def hb(node_id: str = "n1", **over: Any) -> dict[str, Any]:
    return node_beat(node_id, **{"now_ms": NOW, **over})


async def snapshot(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    return await key_snapshot(redis)


def decode(reply: list[Any]) -> list[Any]:
    return [x.decode() if isinstance(x, bytes) else x for x in reply]


async def offline(scripts: Scripts, **kw: Any) -> list[Any]:
    """The raw reply (the wrapper turns -1 into an exception)."""
    k, a = scripts.node_offline_args(**kw)
    return decode(await scripts.script("node_offline")(keys=k, args=a))


async def join(scripts: Scripts, node_id: str, **over: Any) -> None:
    await scripts.register_node_v2(**reg(node_id, **over))
    assert (await scripts.heartbeat_with_pool_assign(**hb(node_id))).alive


async def members(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(key)}


@pytest.fixture
async def two_nodes(redis: Redis, scripts: Scripts) -> None:
    """n1 in SMALL and BIG; n2 in SMALL only (so SMALL outlives n1, BIG does not)."""
    await join(scripts, "n1", lang_sets=[["en", "zh"], ["en", "ja", "zh"]])
    await join(scripts, "n2")


async def assert_n1_gone(redis: Redis, keys: Keys) -> None:
    assert not await redis.exists(keys.node("n1"), keys.node_pools("n1"), keys.pool(BIG))
    assert await members(redis, keys.nodes_all) == {"n2"}
    assert await redis.zscore(keys.nodes_expiry, "n1") is None
    assert await redis.zscore(keys.nodes_connected, "n1") is None
    assert {m.decode() for m in await redis.zrange(keys.pool(SMALL), 0, -1)} == {"n2"}
    assert await redis.hgetall(keys.pool_group("en_zh", "eu", "a100")) == {b"0": b"1"}
    assert not await redis.exists(keys.pool_group("en_ja_zh", "eu", "a100"))
    assert await members(redis, keys.pools_index) == {SMALL}
    assert await members(redis, keys.pair("zh", "en")) == {SMALL}
    assert not await redis.exists(keys.pair("ja", "en"), keys.pair("zh", "ja"))


# --- graceful ------------------------------------------------------------------------------
@pytest.mark.usefixtures("two_nodes")
async def test_graceful_removes_the_node_and_its_empty_shards(
    redis: Redis, keys: Keys, scripts: Scripts
):
    assert await offline(
        scripts, node_id="n1", mode="graceful", conn_id="c-n1", now_ms=NOW + 1
    ) == [1, 2]
    await assert_n1_gone(redis, keys)


@pytest.mark.usefixtures("two_nodes")
async def test_graceful_replay_is_a_no_op(redis: Redis, keys: Keys, scripts: Scripts):
    r = await scripts.node_offline(node_id="n1", mode="graceful", conn_id="c-n1", now_ms=NOW + 1)
    assert (r.code, r.pools_removed) == (1, 2)
    before = await snapshot(redis)
    assert await offline(
        scripts, node_id="n1", mode="graceful", conn_id="c-n1", now_ms=NOW + 1
    ) == [0, 0]
    assert await snapshot(redis) == before


@pytest.mark.usefixtures("two_nodes")
async def test_graceful_without_conn_id_removes_whichever_connection(
    redis: Redis, keys: Keys, scripts: Scripts
):
    assert await offline(scripts, node_id="n1", mode="graceful", now_ms=NOW + 1) == [1, 2]
    await assert_n1_gone(redis, keys)


@pytest.mark.usefixtures("two_nodes")
async def test_graceful_with_a_stale_conn_id_writes_nothing(redis: Redis, scripts: Scripts):
    before = await snapshot(redis)
    assert await offline(
        scripts, node_id="n1", mode="graceful", conn_id="c-old", now_ms=NOW + 1
    ) == [-2, 0]
    assert await snapshot(redis) == before
    r = await scripts.node_offline(node_id="n1", mode="graceful", conn_id="c-old", now_ms=NOW + 1)
    assert (r.code, r.pools_removed) == (-2, 0)
    assert await snapshot(redis) == before


@pytest.mark.usefixtures("two_nodes")
async def test_graceful_after_the_ttl_ran_out_still_cleans(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await redis.delete(keys.node("n1"))  # the hash expired; the pools have no TTL
    assert await offline(
        scripts, node_id="n1", mode="graceful", conn_id="c-n1", now_ms=NOW + 1
    ) == [1, 2]
    await assert_n1_gone(redis, keys)


async def test_unknown_node_is_nothing_to_do(redis: Redis, scripts: Scripts):
    for mode in ("graceful", "dropped", "expired"):
        assert await offline(scripts, node_id="ghost", mode=mode, now_ms=NOW) == [0, 0]
    assert await redis.keys(MINE) == []


# --- dropped -------------------------------------------------------------------------------
@pytest.mark.usefixtures("two_nodes")
async def test_dropped_keeps_pools_and_ttl_but_makes_the_node_unschedulable(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await redis.hset(keys.node("n1"), mapping={"running": 1, "reserved": 1})
    node = keys.node("n1")
    expires_at = await redis.pexpiretime(node)
    keep = [
        keys.node_pools("n1"),
        keys.pools_index,
        keys.pair("zh", "en"),
        keys.pool_group("en_zh", "eu", "a100"),
        keys.pool_group("en_ja_zh", "eu", "a100"),
    ]
    kept = {k: await redis.dump(k) for k in keep}

    assert await offline(scripts, node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 7) == [
        1,
        0,
    ]
    assert await redis.hmget(node, "connected", "disconnected_at", "conn_id") == [
        b"0",
        str(NOW + 7).encode(),
        b"c-n1",
    ]
    assert await redis.pexpiretime(node) == expires_at  # the TTL is the grace period
    assert await redis.zscore(keys.nodes_expiry, "n1") == NOW + TTL
    assert await redis.zscore(keys.nodes_connected, "n1") is None
    assert await members(redis, keys.nodes_all) == {"n1", "n2"}
    for shard in (SMALL, BIG):
        assert await redis.zscore(keys.pool(shard), "n1") == 1000.5  # (1 + 1) / 4 + 1000
    assert await redis.zscore(keys.pool(SMALL), "n2") == 0.0
    assert {k: await redis.dump(k) for k in keep} == kept

    # replay: nothing more to do, nothing written
    before = await snapshot(redis)
    assert await offline(scripts, node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 9) == [
        0,
        0,
    ]
    assert await snapshot(redis) == before


@pytest.mark.usefixtures("two_nodes")
async def test_dropped_with_a_stale_conn_id_writes_nothing(redis: Redis, scripts: Scripts):
    before = await snapshot(redis)
    assert await offline(
        scripts, node_id="n1", mode="dropped", conn_id="c-old", now_ms=NOW + 1
    ) == [-2, 0]
    assert await snapshot(redis) == before


@pytest.mark.usefixtures("two_nodes")
async def test_dropped_then_reconnect(redis: Redis, keys: Keys, scripts: Scripts):
    await offline(scripts, node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 1)
    stale = await scripts.heartbeat_with_pool_assign(**hb("n1", now_ms=NOW + 2))
    assert stale.code == -3
    assert await redis.zscore(keys.pool(SMALL), "n1") >= 1000

    back = await scripts.heartbeat_with_pool_assign(**hb("n1", conn_id="c-new", now_ms=NOW + 3))
    assert back.alive and not back.pools_changed
    for shard in (SMALL, BIG):
        assert await redis.zscore(keys.pool(shard), "n1") < 1000
    assert await redis.hget(keys.node("n1"), "connected") == b"1"
    # the old connection's late close is fenced off
    assert await offline(
        scripts, node_id="n1", mode="graceful", conn_id="c-n1", now_ms=NOW + 4
    ) == [-2, 0]
    assert await offline(
        scripts, node_id="n1", mode="graceful", conn_id="c-new", now_ms=NOW + 5
    ) == [1, 2]
    await assert_n1_gone(redis, keys)


@pytest.mark.usefixtures("two_nodes")
async def test_graceful_after_dropped_on_the_same_connection(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await offline(scripts, node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 1)
    assert await offline(
        scripts, node_id="n1", mode="graceful", conn_id="c-n1", now_ms=NOW + 2
    ) == [1, 2]
    await assert_n1_gone(redis, keys)


async def test_dropped_after_the_ttl_ran_out_is_nothing_to_do(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await redis.delete(keys.node("n1"))
    before = await snapshot(redis)
    assert await offline(scripts, node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 1) == [
        0,
        0,
    ]
    assert await snapshot(redis) == before


# --- expired (the sweeper) -----------------------------------------------------------------
@pytest.mark.usefixtures("two_nodes")
async def test_expired_before_the_deadline_is_refused(redis: Redis, scripts: Scripts):
    before = await snapshot(redis)
    assert await offline(scripts, node_id="n1", mode="expired", now_ms=NOW + TTL - 1) == [-3, 0]
    r = await scripts.node_offline(node_id="n1", mode="expired", now_ms=NOW + TTL - 1)
    assert (r.code, r.pools_removed) == (-3, 0)
    assert await snapshot(redis) == before


@pytest.mark.parametrize("late", [0, 1, 3_600_000])
@pytest.mark.usefixtures("two_nodes")
async def test_expired_at_or_after_the_deadline_cleans(
    redis: Redis, keys: Keys, scripts: Scripts, late: int
):
    assert await offline(scripts, node_id="n1", mode="expired", now_ms=NOW + TTL + late) == [1, 2]
    await assert_n1_gone(redis, keys)
    assert await offline(scripts, node_id="n1", mode="expired", now_ms=NOW + TTL + late) == [0, 0]


@pytest.mark.usefixtures("two_nodes")
async def test_expired_follows_the_latest_heartbeat(redis: Redis, keys: Keys, scripts: Scripts):
    await scripts.heartbeat_with_pool_assign(**hb("n1", now_ms=NOW + 10_000))
    assert await offline(scripts, node_id="n1", mode="expired", now_ms=NOW + TTL) == [-3, 0]
    assert await offline(scripts, node_id="n1", mode="expired", now_ms=NOW + 10_000 + TTL) == [1, 2]
    await assert_n1_gone(redis, keys)


@pytest.mark.usefixtures("two_nodes")
async def test_expired_ignores_conn_id(redis: Redis, keys: Keys, scripts: Scripts):
    assert await offline(
        scripts, node_id="n1", mode="expired", conn_id="c-other", now_ms=NOW + TTL
    ) == [1, 2]
    await assert_n1_gone(redis, keys)


@pytest.mark.usefixtures("two_nodes")
async def test_expired_when_the_hash_is_already_gone_cleans_pools(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await redis.delete(keys.node("n1"))  # what PEXPIRE does when the TTL runs out
    # the key is gone, so the logical deadline no longer matters
    assert await offline(scripts, node_id="n1", mode="expired", now_ms=NOW + 1) == [1, 2]
    await assert_n1_gone(redis, keys)


@pytest.mark.usefixtures("two_nodes")
async def test_expired_for_a_dropped_node_after_the_grace(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await offline(scripts, node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 1)
    assert await offline(scripts, node_id="n1", mode="expired", now_ms=NOW + 2) == [-3, 0]
    assert await offline(scripts, node_id="n1", mode="expired", now_ms=NOW + TTL) == [1, 2]
    await assert_n1_gone(redis, keys)


async def test_everyone_leaving_leaves_no_pool_keys(redis: Redis, keys: Keys, scripts: Scripts):
    for i in range(5):
        await join(scripts, f"n{i}", lang_sets=[["en", "zh"], ["en", "ja"]][: 1 + i % 2])
    modes = ["graceful", "expired", "graceful", "expired", "graceful"]
    for i, mode in enumerate(modes):
        r = await scripts.node_offline(node_id=f"n{i}", mode=mode, now_ms=NOW + TTL)
        assert r.code == 1
    # what stays is each record's fence of ended connections (lib/fence), and only for a while
    left = await redis.keys(MINE)
    assert sorted(left) == sorted(keys.node_retired(f"n{i}").encode() for i in (0, 2, 4)), (
        "a graceful leave fences its connection; an expiry of a connected node does not"
    )
    assert all([0 < await redis.pttl(k) <= 600_000 for k in left])


# --- validation ----------------------------------------------------------------------------
INVALID: list[tuple[str, Any, str]] = [
    ("node_id", "", "node_id"),
    ("node_id", "n:1", "node_id"),
    ("node_id", "{n1}", "node_id"),
    ("node_id", "n" * 65, "node_id"),
    ("mode", "", "mode"),
    ("mode", "GRACEFUL", "mode"),
    ("mode", "drop", "mode"),
    ("conn_id", "c" * 129, "conn_id"),
    ("now_ms", 0, "now_ms"),
    ("now_ms", -1, "now_ms"),
    ("now_ms", 2.5, "now_ms"),
    ("now_ms", "now", "now_ms"),
    ("now_ms", float("inf"), "now_ms"),
    ("now_ms", 10**30, "now_ms"),
]


@pytest.mark.parametrize(
    ("arg", "value", "field"), INVALID, ids=[f"{a}={v!r}"[:40] for a, v, _ in INVALID]
)
@pytest.mark.parametrize("mode", ["graceful", "dropped", "expired"])
@pytest.mark.usefixtures("two_nodes")
async def test_invalid_input_is_rejected_before_any_write(
    redis: Redis, scripts: Scripts, mode: str, arg: str, value: Any, field: str
):
    before = await snapshot(redis)
    kw: dict[str, Any] = {"node_id": "n1", "mode": mode, "conn_id": "c-n1", "now_ms": NOW + TTL}
    kw[arg] = value
    assert await offline(scripts, **kw) == [-1, field]
    assert await snapshot(redis) == before
    with pytest.raises(ScriptRejected) as exc:
        await scripts.node_offline(**kw)
    assert exc.value.details == {"field": field}
    assert await snapshot(redis) == before
