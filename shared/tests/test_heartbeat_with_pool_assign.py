"""heartbeat_with_pool_assign.lua against a real Redis: liveness, load and pool membership (N3, N8).

Pool layout under test: one shard per language set in group ``<langset>:<region>:<gpu>``,
shards bounded by ``max_shard_size`` (lowest shard with room, else the lowest unused id),
``pools:index`` lists every shard, ``pair:<a>:<b>`` lists the shards whose set holds a and b.
"""

from __future__ import annotations

from itertools import permutations
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

from lingua_shared.errors import NodeNotRegistered, ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts, find_lua_dir, require_registered
from lingua_shared.settings import NODE_RECORD_GRACE_MS as GRACE
from lingua_shared.testing import key_snapshot, node_beat, node_registration, sync_redis_for_tests

NOW = 1_700_000_000_000
TTL = 30_000
MINE = Keys("test").prefix + "*"  # the fixtures' cell; other suites may share the database


def reg(node_id: str = "n1", **over: Any) -> dict[str, Any]:
    return node_registration(node_id, **{"now_ms": NOW, "ttl_ms": TTL, **over})


def hb(node_id: str = "n1", **over: Any) -> dict[str, Any]:
    return node_beat(node_id, **{"now_ms": NOW + 1_000, **over})


async def snapshot(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    return await key_snapshot(redis)


async def dumps(redis: Redis) -> dict[bytes, bytes]:
    return {k: v for k, (v, _) in (await snapshot(redis)).items()}


def decode(reply: list[Any]) -> list[Any]:
    return [x.decode() if isinstance(x, bytes) else x for x in reply]


async def raw(scripts: Scripts, keys: list[str], args: list[Any]) -> list[Any]:
    return decode(await scripts.script("heartbeat_with_pool_assign")(keys=keys, args=args))


async def join(scripts: Scripts, node_id: str, max_shard_size: int = 256, **over: Any) -> None:
    await scripts.register_node_v2(**reg(node_id, **over))
    r = await scripts.heartbeat_with_pool_assign(**hb(node_id, max_shard_size=max_shard_size))
    assert r.alive


async def members(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(key)}


async def zmembers(redis: Redis, key: str) -> dict[str, float]:
    return {m.decode(): s for m, s in await redis.zrange(key, 0, -1, withscores=True)}


async def counts(redis: Redis, key: str) -> dict[str, int]:
    return {f.decode(): int(v) for f, v in (await redis.hgetall(key)).items()}


async def test_unknown_node_is_not_registered_and_nothing_is_written(
    redis: Redis, scripts: Scripts
):
    k, a = scripts.heartbeat_args(**hb())
    assert await raw(scripts, k, a) == [-2, ""]
    assert await redis.keys(MINE) == []
    r = await scripts.heartbeat_with_pool_assign(**hb())
    assert (r.code, r.alive, r.pools_changed) == (-2, False, False)
    with pytest.raises(NodeNotRegistered):
        require_registered(r, "n1")


async def test_first_heartbeat_joins_the_pool(redis: Redis, keys: Keys, scripts: Scripts):
    await scripts.register_node_v2(**reg())
    k, a = scripts.heartbeat_args(
        **hb(running_jobs=1, cpu_percent=12.5, gpu_percent=50, mem_percent=0, ttl_ms=20_000)
    )
    assert await raw(scripts, k, a) == [1, 1]

    shard = "en_zh:eu:a100:0"
    assert await zmembers(redis, keys.pool(shard)) == {"n1": 0.0}
    assert await counts(redis, keys.pool_group("en_zh", "eu", "a100")) == {"0": 1}
    assert await members(redis, keys.pools_index) == {shard}
    assert await members(redis, keys.pair("en", "zh")) == {shard}
    assert await members(redis, keys.pair("zh", "en")) == {shard}
    assert await members(redis, keys.node_pools("n1")) == {shard}

    node = keys.node("n1")
    got = await redis.hmget(
        node,
        "last_heartbeat_ts",
        "connected",
        "conn_id",
        "gateway_id",
        "ttl_ms",
        "pool_sig",
        "reported_running",
        "cpu_percent",
        "gpu_percent",
        "mem_percent",
    )
    assert decode(got) == [
        str(NOW + 1_000),
        "1",
        "c-n1",
        "gw1",
        "20000",
        '[["en","zh"]]|eu|a100',
        "1",
        "12.5",
        "50",
        "0",
    ]
    # the record outlives the logical expiry by the grace the sweeper's hold may use
    assert 18_000 + GRACE < await redis.pttl(node) <= 20_000 + GRACE
    assert await redis.zscore(keys.nodes_expiry, "n1") == NOW + 1_000 + 20_000
    assert await redis.zscore(keys.nodes_connected, "n1") == NOW + 1_000


async def test_absent_usage_is_not_written_and_ttl_zero_keeps_the_stored_ttl(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await scripts.register_node_v2(**reg(ttl_ms=12_345))
    r = await scripts.heartbeat_with_pool_assign(**hb(ttl_ms=0))
    assert r.alive and r.pools_changed
    node = keys.node("n1")
    assert (
        await redis.hmget(node, "reported_running", "cpu_percent", "gpu_percent", "mem_percent")
        == [None] * 4
    )
    assert await redis.hget(node, "ttl_ms") == b"12345"
    assert 10_000 + GRACE < await redis.pttl(node) <= 12_345 + GRACE
    assert await redis.zscore(keys.nodes_expiry, "n1") == NOW + 1_000 + 12_345


async def test_replay_changes_nothing(redis: Redis, keys: Keys, scripts: Scripts):
    await scripts.register_node_v2(**reg())
    await scripts.heartbeat_with_pool_assign(**hb(running_jobs=2))
    before = await dumps(redis)
    k, a = scripts.heartbeat_args(**hb(running_jobs=2))
    assert await raw(scripts, k, a) == [1, 0]
    assert await dumps(redis) == before
    assert await counts(redis, keys.pool_group("en_zh", "eu", "a100")) == {"0": 1}


async def test_time_never_moves_backwards(redis: Redis, keys: Keys, scripts: Scripts):
    await scripts.register_node_v2(**reg())
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 5_000))
    r = await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 2_000))
    assert r.alive
    assert await redis.hget(keys.node("n1"), "last_heartbeat_ts") == str(NOW + 5_000).encode()
    assert await redis.zscore(keys.nodes_expiry, "n1") == NOW + 5_000 + TTL


async def test_load_score(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1")
    pool = keys.pool("en_zh:eu:a100:0")
    await redis.hset(keys.node("n1"), mapping={"running": 1, "reserved": 2})
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 2_000))
    assert await redis.zscore(pool, "n1") == 0.75  # (1 + 2) / 4

    await redis.hset(keys.node("n1"), "status", "draining")
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 3_000))
    assert await redis.zscore(pool, "n1") == 1000.75  # not ready: out of selection's range


async def test_a_draining_beat_takes_the_node_out_of_selection_and_ready_brings_it_back(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    pool = keys.pool("en_zh:eu:a100:0")
    await redis.hset(keys.node("n1"), mapping={"running": 1})
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 2_000, status="draining"))
    assert await redis.hget(keys.node("n1"), "status") == b"draining"
    assert await redis.zscore(pool, "n1") == 1000.25  # its pools kept, its score out of range
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 3_000))  # no status: kept
    assert await redis.zscore(pool, "n1") == 1000.25
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 4_000, status="ready"))
    assert await redis.hget(keys.node("n1"), "status") == b"ready"
    assert await redis.zscore(pool, "n1") == 0.25


async def test_superset_matching_pair_index(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1", lang_sets=[["zh", "en"], ["ja", "zh", "en"]])
    small, big = "en_zh:eu:a100:0", "en_ja_zh:eu:a100:0"
    assert await members(redis, keys.node_pools("n1")) == {small, big}
    assert await members(redis, keys.pools_index) == {small, big}
    assert await members(redis, keys.pair("zh", "en")) == {small, big}
    assert await members(redis, keys.pair("en", "zh")) == {small, big}
    for a, b in permutations(["en", "ja", "zh"], 2):
        assert big in await members(redis, keys.pair(a, b)), (a, b)
    assert await members(redis, keys.pair("ja", "en")) == {big}
    assert await members(redis, keys.pair("en", "ja")) == {big}
    pair_keys = sorted(k.decode() for k in await redis.keys(keys.prefix + "pair:*"))
    assert pair_keys == sorted(keys.pair(a, b) for a, b in permutations(["en", "ja", "zh"], 2))


async def test_duplicate_lang_sets_join_once(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1", lang_sets=[["en", "zh"], ["zh", "en"]])
    assert await members(redis, keys.node_pools("n1")) == {"en_zh:eu:a100:0"}
    assert await counts(redis, keys.pool_group("en_zh", "eu", "a100")) == {"0": 1}


async def test_shards_are_bounded(redis: Redis, keys: Keys, scripts: Scripts):
    group = keys.pool_group("en_zh", "eu", "a100")
    shard = [f"en_zh:eu:a100:{i}" for i in range(3)]
    for i in range(5):
        await join(scripts, f"n{i}", max_shard_size=2)
    assert await counts(redis, group) == {"0": 2, "1": 2, "2": 1}
    assert await zmembers(redis, keys.pool(shard[0])) == {"n0": 0.0, "n1": 0.0}
    assert await zmembers(redis, keys.pool(shard[1])) == {"n2": 0.0, "n3": 0.0}
    assert await zmembers(redis, keys.pool(shard[2])) == {"n4": 0.0}
    assert await members(redis, keys.pools_index) == set(shard)
    assert await members(redis, keys.pair("en", "zh")) == set(shard)
    assert await members(redis, keys.pair("zh", "en")) == set(shard)

    # a freed place in shard 0 is taken before shard 2's
    await scripts.node_offline(node_id="n1", mode="graceful", now_ms=NOW + 2_000)
    await join(scripts, "n5", max_shard_size=2)
    assert await members(redis, keys.node_pools("n5")) == {shard[0]}
    assert await counts(redis, group) == {"0": 2, "1": 2, "2": 1}

    # shards left empty disappear with their index and pair entries
    await scripts.node_offline(node_id="n4", mode="graceful", now_ms=NOW + 2_000)
    assert not await redis.exists(keys.pool(shard[2]))
    assert await counts(redis, group) == {"0": 2, "1": 2}
    assert await members(redis, keys.pools_index) == {shard[0], shard[1]}
    assert await members(redis, keys.pair("zh", "en")) == {shard[0], shard[1]}
    for n in ("n2", "n3"):
        await scripts.node_offline(node_id=n, mode="graceful", now_ms=NOW + 2_000)
    assert await counts(redis, group) == {"0": 2}
    assert await members(redis, keys.pools_index) == {shard[0]}
    assert await members(redis, keys.pair("en", "zh")) == {shard[0]}

    # shard 0 is full: the next node opens the lowest unused id
    await join(scripts, "n6", max_shard_size=2)
    assert await members(redis, keys.node_pools("n6")) == {shard[1]}
    assert await counts(redis, group) == {"0": 2, "1": 1}
    assert await members(redis, keys.pair("en", "zh")) == {shard[0], shard[1]}


async def test_replayed_heartbeats_never_count_a_node_twice(
    redis: Redis, keys: Keys, scripts: Scripts
):
    for i in range(3):
        await scripts.register_node_v2(**reg(f"n{i}"))
        for _ in range(3):
            await scripts.heartbeat_with_pool_assign(**hb(f"n{i}", max_shard_size=2))
    assert await counts(redis, keys.pool_group("en_zh", "eu", "a100")) == {"0": 2, "1": 1}


async def test_lang_sets_change_moves_the_node_on_the_next_heartbeat(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1", lang_sets=[["en", "zh"], ["en", "fr"]])
    await join(scripts, "n2", lang_sets=[["en", "fr"]])
    old, kept = "en_zh:eu:a100:0", "en_fr:eu:a100:0"
    assert await members(redis, keys.node_pools("n1")) == {old, kept}

    await scripts.register_node_v2(**reg("n1", lang_sets=[["en", "ja"], ["en", "fr"]]))
    # registration does no pool work
    assert await members(redis, keys.node_pools("n1")) == {old, kept}
    r = await scripts.heartbeat_with_pool_assign(**hb("n1", now_ms=NOW + 2_000))
    assert r.alive and r.pools_changed

    new = "en_ja:eu:a100:0"
    assert await members(redis, keys.node_pools("n1")) == {new, kept}
    assert await zmembers(redis, keys.pool(kept)) == {"n1": 0.0, "n2": 0.0}
    assert await counts(redis, keys.pool_group("en_fr", "eu", "a100")) == {"0": 2}
    assert not await redis.exists(keys.pool(old))
    assert not await redis.exists(keys.pool_group("en_zh", "eu", "a100"))
    assert not await redis.exists(keys.pair("en", "zh"))
    assert not await redis.exists(keys.pair("zh", "en"))
    assert await members(redis, keys.pools_index) == {new, kept}
    assert await members(redis, keys.pair("ja", "en")) == {new}
    assert await members(redis, keys.pair("fr", "en")) == {kept}

    r = await scripts.heartbeat_with_pool_assign(**hb("n1", now_ms=NOW + 3_000))
    assert r.alive and not r.pools_changed


async def test_region_change_moves_the_node(redis: Redis, keys: Keys, scripts: Scripts):
    await join(scripts, "n1")
    await scripts.register_node_v2(**reg("n1", region="us", gpu_tier="t4"))
    await scripts.heartbeat_with_pool_assign(**hb("n1", now_ms=NOW + 2_000))
    assert await members(redis, keys.node_pools("n1")) == {"en_zh:us:t4:0"}
    assert await members(redis, keys.pools_index) == {"en_zh:us:t4:0"}
    assert await members(redis, keys.pair("en", "zh")) == {"en_zh:us:t4:0"}
    assert not await redis.exists(keys.pool("en_zh:eu:a100:0"))


async def test_heartbeat_on_the_dropped_connection_is_stale(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await scripts.node_offline(node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 1_500)
    before = await snapshot(redis)
    k, a = scripts.heartbeat_args(**hb(now_ms=NOW + 2_000, running_jobs=3))
    assert await raw(scripts, k, a) == [-3, ""]
    assert await snapshot(redis) == before
    r = await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 2_000))
    assert (r.code, r.alive) == (-3, False)


async def test_heartbeat_on_a_new_connection_restores_the_node(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await scripts.node_offline(node_id="n1", mode="dropped", conn_id="c-n1", now_ms=NOW + 1_500)
    pool = keys.pool("en_zh:eu:a100:0")
    assert await redis.zscore(pool, "n1") >= 1000

    r = await scripts.heartbeat_with_pool_assign(
        **hb(conn_id="c2", gateway_id="gw2", now_ms=NOW + 2_000)
    )
    assert r.alive and not r.pools_changed
    assert await redis.zscore(pool, "n1") == 0.0
    assert await redis.hmget(keys.node("n1"), "connected", "conn_id", "gateway_id") == [
        b"1",
        b"c2",
        b"gw2",
    ]
    assert await redis.zscore(keys.nodes_connected, "n1") == NOW + 2_000


async def test_score_refresh_never_readds_a_removed_member(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await join(scripts, "n1")
    await join(scripts, "n2")
    pool = keys.pool("en_zh:eu:a100:0")
    await redis.zrem(pool, "n1")  # e.g. a concurrent cleanup took it out
    await scripts.heartbeat_with_pool_assign(**hb("n1", now_ms=NOW + 2_000))
    assert await zmembers(redis, pool) == {"n2": 0.0}


INVALID: list[tuple[str, Any, str]] = [
    ("node_id", "", "node_id"),
    ("node_id", "a:b", "node_id"),
    ("node_id", "{n1}", "node_id"),
    ("conn_id", "", "conn_id"),
    ("conn_id", "c" * 129, "conn_id"),
    ("gateway_id", "", "gateway_id"),
    ("gateway_id", "g" * 129, "gateway_id"),
    ("now_ms", 0, "now_ms"),
    ("now_ms", -1, "now_ms"),
    ("now_ms", 1.5, "now_ms"),
    ("now_ms", "later", "now_ms"),
    ("now_ms", float("inf"), "now_ms"),
    ("now_ms", 10**30, "now_ms"),
    ("ttl_ms", -1, "ttl_ms"),
    ("ttl_ms", 0.5, "ttl_ms"),
    ("ttl_ms", "x", "ttl_ms"),
    ("ttl_ms", float("inf"), "ttl_ms"),
    ("ttl_ms", 10**30, "ttl_ms"),
    ("running_jobs", "two", "running_jobs"),
    ("running_jobs", float("nan"), "running_jobs"),
    ("cpu_percent", "", "cpu_percent"),
    ("cpu_percent", float("inf"), "cpu_percent"),
    ("gpu_percent", "x", "gpu_percent"),
    ("gpu_percent", float("-inf"), "gpu_percent"),
    ("mem_percent", "full", "mem_percent"),
    ("mem_percent", float("nan"), "mem_percent"),
    ("max_shard_size", 0, "max_shard_size"),
    ("max_shard_size", -2, "max_shard_size"),
    ("max_shard_size", 1.5, "max_shard_size"),
    ("max_shard_size", "big", "max_shard_size"),
    ("status", "offline", "status"),
    ("status", "READY", "status"),
]


@pytest.mark.parametrize(
    ("arg", "value", "field"), INVALID, ids=[f"{a}={v!r}"[:40] for a, v, _ in INVALID]
)
async def test_invalid_input_is_rejected_before_any_write(
    redis: Redis, keys: Keys, scripts: Scripts, arg: str, value: Any, field: str
):
    await scripts.register_node_v2(**reg("n1", lang_sets=[["en", "zh"], ["en", "ja"]]))
    await join(scripts, "n2")
    # n1 has changed pools pending and a new connection: any write would show
    before = await snapshot(redis)
    kw = hb(
        "n1",
        conn_id="c-new",
        now_ms=NOW + 9_000,
        ttl_ms=5_000,
        running_jobs=1,
        cpu_percent=1.0,
        gpu_percent=2.0,
        mem_percent=3.0,
        max_shard_size=1,
    )
    kw[arg] = value
    k, a = scripts.heartbeat_args(**kw)
    assert await raw(scripts, k, a) == [-1, field]
    assert await snapshot(redis) == before
    with pytest.raises(ScriptRejected) as exc:
        await scripts.heartbeat_with_pool_assign(**kw)
    assert exc.value.details == {"field": field}
    assert await snapshot(redis) == before


# --- property: any sequence of node events keeps the pool structure consistent ------------
PROP_NODES = ["a", "b", "c", "d", "e"]
PROP_SETS = [["en", "zh"], ["en", "ja", "zh"], ["en", "fr"], ["fr", "ja"], ["en", "fr", "ja", "zh"]]
PROP_MAX_SHARD = 2
PROP_TTL = 600_000  # real PEXPIRE: long enough never to fire during the test

lang_sets_st = st.lists(st.sampled_from(PROP_SETS), min_size=1, max_size=3).map(
    lambda sets: [list(reversed(x)) for x in sets]  # unsorted on the wire; the script sorts
)
region_st = st.sampled_from(["eu", "eu", "us"])
pick_st = st.integers(0, 1_000)


class PoolMachine(RuleBasedStateMachine):
    """A model of which nodes are registered, connected and assigned; Redis must agree.

    Rules act mostly on registered nodes (``pick`` indexes them) so that short runs still
    reach shard overflow, group moves, drops, reconnects and removals.
    """

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.r = sync_redis_for_tests(self.url, decode_responses=True)
        self.k = Keys("test")
        for key in self.r.keys(MINE):
            self.r.delete(key)
        self.s = Scripts(self.r, self.k, find_lua_dir())  # type: ignore[arg-type]
        self.now = NOW
        self.serial = 0
        # node -> {"groups", "conn", "connected", "deadline", "assigned", "schedulable"}
        self.nodes: dict[str, dict[str, Any]] = {}

    def teardown(self) -> None:
        for key in self.r.keys(MINE):
            self.r.delete(key)
        self.r.close()

    def call(self, name: str, builder: str, **kw: Any) -> list[Any]:
        k, a = getattr(self.s, builder)(**kw)
        return list(self.s.script(name)(keys=k, args=a))

    def new_conn(self) -> str:
        self.serial += 1
        return f"conn{self.serial}"

    def known(self, pick: int) -> str:
        return sorted(self.nodes)[pick % len(self.nodes)]

    def ghost(self, pick: int) -> str | None:
        free = [n for n in PROP_NODES if n not in self.nodes]
        return free[pick % len(free)] if free else None

    # -- actions (each checks the reply against the model) --------------------------------
    def do_register(self, node: str, sets: list[list[str]], region: str, new_conn: bool) -> None:
        m = self.nodes.get(node)
        conn = m["conn"] if m and not new_conn else self.new_conn()
        reply = self.call(
            "register_node_v2",
            "register_node_v2_args",
            node_id=node,
            now_ms=self.now,
            ttl_ms=PROP_TTL,
            region=region,
            gpu_tier="a100",
            lang_sets=sets,
            capacity=2,
            services={},
            gateway_id="gw",
            conn_id=conn,
        )
        assert reply[0] == (2 if m else 1)
        groups = {f"{'_'.join(sorted(x))}:{region}:a100" for x in sets}
        if m is None:
            m = self.nodes[node] = {"assigned": set(), "schedulable": False}
        m.update(groups=groups, conn=conn, connected=True, deadline=self.now + PROP_TTL)

    def do_heartbeat(self, node: str, conn: str, replay: bool = False) -> None:
        m = self.nodes.get(node)
        for attempt in range(2 if replay else 1):
            reply = self.call(
                "heartbeat_with_pool_assign",
                "heartbeat_args",
                node_id=node,
                conn_id=conn,
                gateway_id="gw",
                now_ms=self.now,
                max_shard_size=PROP_MAX_SHARD,
            )
            if m is None:
                assert reply == [-2, ""]
            elif conn == m["conn"] and not m["connected"]:
                assert reply == [-3, ""]
            else:
                # changed = 1 exactly when the groups differ (a replay never changes them)
                assert reply == [1, int(m["assigned"] != m["groups"])], (attempt, reply)
                m.update(
                    conn=conn,
                    connected=True,
                    deadline=self.now + PROP_TTL,
                    assigned=m["groups"],
                    schedulable=True,
                )

    def do_offline(self, node: str, mode: str, conn: str) -> None:
        m = self.nodes.get(node)
        reply = self.call(
            "node_offline",
            "node_offline_args",
            node_id=node,
            mode=mode,
            conn_id=conn,
            now_ms=self.now,
        )
        if m is None:
            assert reply == [0, 0]
        elif mode == "expired":
            if self.now < m["deadline"]:
                assert reply == [-3, 0]
            else:
                assert reply == [1, len(m["assigned"])]
                del self.nodes[node]
        elif conn not in ("", m["conn"]):
            assert reply == [-2, 0]
        elif mode == "dropped":
            assert reply == ([1, 0] if m["connected"] else [0, 0])
            m.update(connected=False, schedulable=False)
        else:
            assert reply == [1, len(m["assigned"])]
            del self.nodes[node]

    # -- rules ----------------------------------------------------------------------------
    @initialize(sets=st.lists(lang_sets_st, min_size=2, max_size=4), region=region_st)
    def start(self, sets: list[list[list[str]]], region: str) -> None:
        for node, node_sets in zip(PROP_NODES, sets, strict=False):
            self.do_register(node, node_sets, region, new_conn=True)
            self.do_heartbeat(node, self.nodes[node]["conn"])

    @rule(ms=st.integers(1, 20_000))
    def tick(self, ms: int) -> None:
        self.now += ms

    @rule(pick=pick_st, sets=lang_sets_st, region=region_st, beat=st.booleans())
    def join(self, pick: int, sets: list[list[str]], region: str, beat: bool) -> None:
        node = self.ghost(pick)
        if node is not None:
            self.do_register(node, sets, region, new_conn=True)
            if beat:
                self.do_heartbeat(node, self.nodes[node]["conn"])

    @precondition(lambda self: self.nodes)
    @rule(pick=pick_st, sets=lang_sets_st, region=region_st, new_conn=st.booleans())
    def reregister(self, pick: int, sets: list[list[str]], region: str, new_conn: bool) -> None:
        self.do_register(self.known(pick), sets, region, new_conn)

    @precondition(lambda self: self.nodes)
    @rule(pick=pick_st, new_conn=st.booleans(), replay=st.booleans())
    def heartbeat(self, pick: int, new_conn: bool, replay: bool) -> None:
        node = self.known(pick)
        conn = self.new_conn() if new_conn else self.nodes[node]["conn"]
        self.do_heartbeat(node, conn, replay)

    @precondition(lambda self: self.nodes)
    @rule(
        pick=pick_st,
        mode=st.sampled_from(["graceful", "dropped"]),
        conn=st.sampled_from(["current", "", "stale"]),
        replay=st.booleans(),
    )
    def disconnect(self, pick: int, mode: str, conn: str, replay: bool) -> None:
        node = self.known(pick)
        conn_id = {"current": self.nodes[node]["conn"], "": "", "stale": "stale"}[conn]
        for _ in range(2 if replay else 1):
            self.do_offline(node, mode, conn_id)

    @precondition(lambda self: self.nodes)
    @rule(pick=pick_st, due=st.booleans())
    def sweep(self, pick: int, due: bool) -> None:
        node = self.known(pick)
        if due:
            self.now = max(self.now, self.nodes[node]["deadline"])
        self.do_offline(node, "expired", "")

    @rule(pick=pick_st, action=st.sampled_from(["heartbeat", "graceful", "dropped", "expired"]))
    def unknown_node(self, pick: int, action: str) -> None:
        node = self.ghost(pick)
        if node is None:
            return
        if action == "heartbeat":
            self.do_heartbeat(node, "conn-x")
        else:
            self.do_offline(node, action, "conn-x")

    @rule()
    def everyone_leaves(self) -> None:
        for node in list(self.nodes):
            self.do_offline(node, "graceful", "")
        left = [k for k in self.r.keys(MINE) if k != self.k.bands]  # the bands' registry stays
        # a removed record's fence of ended connections stays, for a bounded time (lib/fence)
        fences = [k for k in left if k.endswith(":retired")]
        assert all(0 < self.r.pttl(k) <= 600_000 for k in fences), "fences expire"
        assert [k for k in left if k not in fences] == [], "nothing outlives the last node"

    # -- invariants -----------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        """Every key of the cell, read in one pipelined round trip."""
        names = sorted(k for k in self.r.keys(MINE) if not k.endswith(":retired"))
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            rest = name[len(self.k.prefix) :]
            if rest.startswith(("pool:", "pairbest:", "nodes:expiry", "nodes:connected")):
                pipe.zrange(name, 0, -1, withscores=True)
            elif (
                rest.startswith("poolgroup:")
                or rest == "bands"
                or (rest.startswith("node:") and not rest.endswith(":pools"))
            ):
                pipe.hgetall(name)
            else:
                pipe.smembers(name)
        return {
            name[len(self.k.prefix) :]: v for name, v in zip(names, pipe.execute(), strict=True)
        }

    @invariant()
    def redis_matches_the_model(self) -> None:
        st_ = self.read_state()

        def scan(kind: str) -> dict[str, Any]:
            return {key[len(kind) :]: v for key, v in st_.items() if key.startswith(kind)}

        pools = {shard: dict(z) for shard, z in scan("pool:").items()}
        groups = scan("poolgroup:")
        pairs = scan("pair:")
        index = st_.get("pools:index", set())

        # pool structure
        assert index == set(pools), "pools:index lists exactly the existing shards"
        assert {f"{g}:{n}" for g, h in groups.items() for n in h} == set(pools)
        for shard, found in pools.items():
            langset, region, gpu, n = Keys.parse_shard_id(shard)
            assert 1 <= len(found) <= PROP_MAX_SHARD, shard
            assert int(groups[f"{langset}:{region}:{gpu}"][str(n)]) == len(found)
            for member in found:
                assert shard in st_.get(f"node:{member}:pools", set()), (member, shard)
            for a, b in permutations(langset.split("_"), 2):
                assert shard in pairs.get(f"{a}:{b}", set()), (shard, a, b)
        for pair, shards in pairs.items():
            a, b = pair.split(":")
            for shard in shards:
                assert shard in index, (pair, shard)
                assert {a, b} <= set(shard.split(":")[0].split("_")), (pair, shard)

        # the pair index: every shard of a pair, at its lowest band-0 free score (none: 1e9)
        best = {key: dict(z) for key, z in scan("pairbest:").items()}
        assert set(best) == set(pairs), "a pair index for every pair, none left over"
        for pair, shards in pairs.items():
            assert set(best[pair]) == shards, pair
            for shard in shards:
                free = [x for x in pools[shard].values() if x < 1]
                assert best[pair][shard] == (min(free) if free else 1e9), (pair, shard)

        # nodes
        assert st_.get("nodes:all", set()) == set(self.nodes)
        connected = {n for n, m in self.nodes.items() if m["connected"]}
        assert {n for n, _ in st_.get("nodes:connected", [])} == connected
        expiry = dict(st_.get("nodes:expiry", []))
        assert expiry == {n: m["deadline"] for n, m in self.nodes.items()}
        for node in PROP_NODES:
            m = self.nodes.get(node)
            shards = st_.get(f"node:{node}:pools", set())
            if m is None:
                assert f"node:{node}" not in st_ and not shards
                continue
            assert st_[f"node:{node}"]["conn_id"] == m["conn"]
            assert {x.rsplit(":", 1)[0] for x in shards} == m["assigned"]
            assert len(shards) == len(m["assigned"]), "one shard per group"
            for shard in shards:
                score = pools[shard][node]
                assert (score < 1000) == m["schedulable"], (node, shard, score)


def test_pool_invariants_hold_for_any_event_sequence(redis_url: str) -> None:
    PoolMachine.url = redis_url
    run_state_machine_as_test(
        PoolMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


async def test_a_beat_scores_the_node_as_a_whole_record_read_would(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    """A public node in band 0 is scored from what the beat reads (no cool-down can be in
    force); one in a band, or a private one, from the whole record: a cool-down that ended
    moves it back to band 0, a private node stays in its tenant's band."""
    shard = keys.pool("en_zh:eu:a100:0")
    await join(scripts, "n1")
    assert (await zmembers(redis, shard))["n1"] == 0.0  # band 0, nothing running
    await redis.hset(keys.node("n1"), mapping={"running": 1, "capacity": 4})
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 1_500))
    assert (await zmembers(redis, shard))["n1"] == 0.25  # the load it read
    # a cool-down: service_cooldown scores the node into a band of its own
    await scripts.service_cooldown(
        node_id="n1", service="asr", until_ms=NOW + 5_000, now_ms=NOW + 2_000
    )
    cooled = (await zmembers(redis, shard))["n1"]
    assert cooled >= 2.25 and await redis.hget(keys.node("n1"), "band") not in (None, b"0")
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 3_000))  # still cooling
    assert (await zmembers(redis, shard))["n1"] == cooled
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 6_000))  # the cool-down ended
    assert (await zmembers(redis, shard))["n1"] == 0.25
    assert await redis.hget(keys.node("n1"), "band") == b"0"
    await scripts.heartbeat_with_pool_assign(**hb(now_ms=NOW + 7_000, status="draining"))
    assert (await zmembers(redis, shard))["n1"] == 1000.25  # out of selection's range
    # a private node is always in its tenant's band
    await join(scripts, "n2", public=False, tenant="acme")
    private = (await zmembers(redis, shard))["n2"]
    assert private >= 2.0
    await scripts.heartbeat_with_pool_assign(**hb("n2", now_ms=NOW + 8_000))
    assert (await zmembers(redis, shard))["n2"] == private
