"""register_node_v2.lua against a real Redis: the reply and every key it writes (N1, N2)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.protocol.node import (
    CapabilityByType,
    LanguageCapabilities,
    NodeRegister,
    derive_capabilities,
)
from lingua_shared.scripts import Scripts, find_lua_dir
from lingua_shared.settings import NODE_RECORD_GRACE_MS as GRACE
from lingua_shared.testing import key_snapshot, node_beat, node_registration, sync_redis_for_tests

NOW = 1_700_000_000_000
TTL = 30_000
MINE = Keys("test").prefix + "*"  # the fixtures' cell; other suites may share the database


def reg(**over: Any) -> dict[str, Any]:
    base = {"now_ms": NOW, "ttl_ms": TTL, "conn_id": "c1", "lang_sets": [["zh", "en"]]}
    return node_registration(
        str(over.pop("node_id", "n1")), **{**base, "meta": {"version": "1.0"}, **over}
    )


def hb(**over: Any) -> dict[str, Any]:
    return node_beat(str(over.pop("node_id", "n1")), **{"now_ms": NOW, "conn_id": "c1", **over})


async def snapshot(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    return await key_snapshot(redis)


async def dumps(redis: Redis) -> dict[bytes, bytes]:
    """Like :func:`snapshot` without expiry times (a replay re-arms the TTL from Redis' clock)."""
    return {k: v for k, (v, _) in (await snapshot(redis)).items()}


async def raw(scripts: Scripts, keys: list[str], args: list[Any]) -> list[Any]:
    return await scripts.script("register_node_v2")(keys=keys, args=args)


def decode(reply: list[Any]) -> list[Any]:
    return [x.decode() if isinstance(x, bytes) else x for x in reply]


async def test_create_writes_record_ttl_and_indexes(redis: Redis, keys: Keys, scripts: Scripts):
    k, a = scripts.register_node_v2_args(**reg())
    assert decode(await raw(scripts, k, a)) == [1, "", ""]

    record = {f.decode(): v.decode() for f, v in (await redis.hgetall(keys.node("n1"))).items()}
    assert record == {
        "node_id": "n1",
        "region": "eu",
        "gpu_tier": "a100",
        "lang_sets": '[["en","zh"]]',  # each set sorted
        "capacity": "4",
        "services": json.dumps(reg()["services"]),
        "meta": '{"version": "1.0"}',
        "status": "ready",
        "connected": "1",
        "gateway_id": "gw1",
        "conn_id": "c1",
        "ttl_ms": str(TTL),
        "last_heartbeat_ts": str(NOW),
        "registered_at": str(NOW),
        "reg_id": f"{NOW}/c1",
        "running": "0",
        "reserved": "0",
        "pool_sig": "",
        "acks": "1",  # the builder's default: a node that sends job_ack
        "public": "1",
        "tenant": "",
    }
    assert TTL - 2_000 + GRACE < await redis.pttl(keys.node("n1")) <= TTL + GRACE
    assert await redis.smembers(keys.nodes_all) == {b"n1"}
    assert await redis.zscore(keys.nodes_expiry, "n1") == NOW + TTL
    assert await redis.zscore(keys.nodes_connected, "n1") == NOW
    # no pool work (N2): exactly these four keys exist
    assert sorted(await redis.keys(MINE)) == sorted(
        x.encode()
        for x in (keys.node("n1"), keys.nodes_all, keys.nodes_expiry, keys.nodes_connected)
    )


async def test_wrapper_result(scripts: Scripts):
    first = await scripts.register_node_v2(**reg())
    assert (first.created, first.replaced_gateway_id, first.replaced_conn_id) == (True, "", "")
    again = await scripts.register_node_v2(**reg())
    assert (again.created, again.replaced_gateway_id, again.replaced_conn_id) == (False, "", "")


async def test_replay_is_idempotent(redis: Redis, keys: Keys, scripts: Scripts):
    await scripts.register_node_v2(**reg())
    before = await dumps(redis)
    k, a = scripts.register_node_v2_args(**reg())
    assert decode(await raw(scripts, k, a)) == [2, "", ""]
    assert await dumps(redis) == before
    assert TTL - 2_000 + GRACE < await redis.pttl(keys.node("n1")) <= TTL + GRACE


async def test_new_connection_reports_the_replaced_one(redis: Redis, keys: Keys, scripts: Scripts):
    await scripts.register_node_v2(**reg())
    r = await scripts.register_node_v2(**reg(conn_id="c2", gateway_id="gw2", now_ms=NOW + 5))
    assert (r.created, r.replaced_gateway_id, r.replaced_conn_id) == (False, "gw1", "c1")
    assert await redis.hmget(keys.node("n1"), "conn_id", "gateway_id", "connected") == [
        b"c2",
        b"gw2",
        b"1",
    ]
    assert await redis.zscore(keys.nodes_expiry, "n1") == NOW + 5 + TTL
    assert await redis.hget(keys.node("n1"), "registered_at") == str(NOW).encode()


async def test_reregister_after_drop_replaces_nothing(redis: Redis, keys: Keys, scripts: Scripts):
    await scripts.register_node_v2(**reg())
    await scripts.node_offline(node_id="n1", mode="dropped", conn_id="c1", now_ms=NOW + 1)
    r = await scripts.register_node_v2(**reg(conn_id="c2", now_ms=NOW + 2))
    assert (r.created, r.replaced_gateway_id, r.replaced_conn_id) == (False, "", "")
    assert await redis.hget(keys.node("n1"), "connected") == b"1"
    assert await redis.zscore(keys.nodes_connected, "n1") == NOW + 2


async def test_reregistration_keeps_slot_accounting_and_pools(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await scripts.register_node_v2(**reg())
    await scripts.heartbeat_with_pool_assign(**hb())
    await redis.hset(keys.node("n1"), mapping={"running": 2, "reserved": 1})
    shard = keys.pool("en_zh:eu:a100:0")
    pool_keys = [
        keys.node_pools("n1"),
        shard,
        keys.pools_index,
        keys.pair("en", "zh"),
        keys.pair("zh", "en"),
        keys.pool_group("en_zh", "eu", "a100"),
    ]
    pools_before = {x: await redis.dump(x) for x in pool_keys}
    assert all(pools_before.values())

    r = await scripts.register_node_v2(**reg(capacity=8, conn_id="c2", now_ms=NOW + 10))
    assert not r.created
    got = await redis.hmget(
        keys.node("n1"),
        "running",
        "reserved",
        "capacity",
        "registered_at",
        "pool_sig",
        "last_heartbeat_ts",
        "reg_id",
    )
    assert got[:4] == [b"2", b"1", b"8", str(NOW).encode()]
    assert got[6] == f"{NOW}/c1".encode()  # the same registration: the leases still count
    assert got[4] == b'[["en","zh"]]|eu|a100'  # the pool signature survives
    assert got[5] == str(NOW + 10).encode()
    # no pool work on re-registration
    assert {x: await redis.dump(x) for x in pool_keys} == pools_before


async def test_registration_after_expiry_starts_accounting_afresh(
    redis: Redis, keys: Keys, scripts: Scripts
):
    await scripts.register_node_v2(**reg())
    await redis.hset(keys.node("n1"), mapping={"running": 2, "reserved": 1})
    await redis.delete(keys.node("n1"))  # the TTL ran out
    r = await scripts.register_node_v2(**reg(now_ms=NOW + 99))
    assert r.created
    assert await redis.hmget(keys.node("n1"), "running", "reserved", "registered_at") == [
        b"0",
        b"0",
        str(NOW + 99).encode(),
    ]


async def test_a_registration_in_the_same_millisecond_is_still_a_new_registration(
    redis: Redis, keys: Keys, scripts: Scripts
):
    """Found by the scheduling model: a node that leaves and registers again within one
    millisecond got the same registered_at, so its old jobs' slots were taken from the new
    registration's counters. reg_id tells the two apart."""
    await scripts.register_node_v2(**reg(conn_id="c1"))
    await redis.delete(keys.node("n1"))  # a goodbye (or its TTL) at the same instant
    await scripts.register_node_v2(**reg(conn_id="c2"))
    assert await redis.hmget(keys.node("n1"), "registered_at", "reg_id") == [
        str(NOW).encode(),
        f"{NOW}/c2".encode(),
    ]


# (argument, value passed to the builder or a raw ARGV string, field named in the reply)
# ARGV position of each builder argument (the builder takes them in ARGV order)
ARG_INDEX = {
    name: i
    for i, name in enumerate(
        p for p in inspect.signature(Scripts.register_node_v2_args).parameters if p != "self"
    )
}
RAW = object()  # marks a value that replaces the raw ARGV string instead of the builder input
INVALID: list[tuple[str, Any, str]] = [
    ("node_id", "", "node_id"),
    ("node_id", "a:b", "node_id"),
    ("node_id", "{x}", "node_id"),
    ("node_id", "-lead", "node_id"),
    ("node_id", "n" * 65, "node_id"),
    ("now_ms", 0, "now_ms"),
    ("now_ms", -5, "now_ms"),
    ("now_ms", 1.5, "now_ms"),
    ("now_ms", "soon", "now_ms"),
    ("now_ms", float("inf"), "now_ms"),
    ("now_ms", float("nan"), "now_ms"),
    ("now_ms", 10**30, "now_ms"),
    ("ttl_ms", 0, "ttl_ms"),
    ("ttl_ms", -1, "ttl_ms"),
    ("ttl_ms", 2.5, "ttl_ms"),
    ("ttl_ms", float("inf"), "ttl_ms"),
    ("ttl_ms", 2**62, "ttl_ms"),
    ("ttl_ms", 10**30, "ttl_ms"),
    ("region", "", "region"),
    ("region", "EU", "region"),
    ("region", "eu:west", "region"),
    ("region", "{eu}", "region"),
    ("region", "r" * 65, "region"),
    ("gpu_tier", "", "gpu_tier"),
    ("gpu_tier", "A100", "gpu_tier"),
    ("gpu_tier", "a 100", "gpu_tier"),
    ("lang_sets", [], "lang_sets"),
    ("lang_sets", [["en"]], "lang_sets"),
    ("lang_sets", [["en", "en"]], "lang_sets"),
    ("lang_sets", [["en", "zh:x"]], "lang_sets"),
    ("lang_sets", [["en", "z_h"]], "lang_sets"),
    ("lang_sets", [["EN", "zh"]], "lang_sets"),
    ("lang_sets", [["e", "zh"]], "lang_sets"),
    ("lang_sets", [["en-", "zh"]], "lang_sets"),
    ("lang_sets", [["en", 1]], "lang_sets"),
    ("lang_sets", [["en", "zh"], "ja"], "lang_sets"),
    ("lang_sets", [[f"l{c}" for c in "abcdefghi"]], "lang_sets"),
    ("lang_sets", [["en", "zh"]] * 17, "lang_sets"),
    ("lang_sets", (RAW, "not json"), "lang_sets"),
    ("lang_sets", (RAW, '{"a": ["en", "zh"]}'), "lang_sets"),
    ("capacity", 0, "capacity"),
    ("capacity", 257, "capacity"),
    ("capacity", 1.5, "capacity"),
    ("capacity", "many", "capacity"),
    ("services", (RAW, "not json"), "services"),
    ("services", "asr", "services"),
    ("services", 5, "services"),
    ("gateway_id", "", "gateway_id"),
    ("gateway_id", "g" * 129, "gateway_id"),
    ("conn_id", "", "conn_id"),
    ("conn_id", "c" * 129, "conn_id"),
    ("meta", (RAW, "{oops"), "meta"),
    ("meta", "text", "meta"),
]


@pytest.fixture
async def populated(redis: Redis, scripts: Scripts) -> dict[bytes, tuple[bytes, int]]:
    """A database with the node under test (in a pool) and a neighbour."""
    await scripts.register_node_v2(**reg())
    await scripts.heartbeat_with_pool_assign(**hb())
    await scripts.register_node_v2(**reg(node_id="n2", conn_id="c9"))
    await scripts.heartbeat_with_pool_assign(**hb(node_id="n2", conn_id="c9"))
    return await snapshot(redis)


@pytest.mark.parametrize(
    ("arg", "value", "field"), INVALID, ids=[f"{a}={v!r}"[:40] for a, v, _ in INVALID]
)
async def test_invalid_input_is_rejected_before_any_write(
    redis: Redis,
    scripts: Scripts,
    populated: dict[bytes, tuple[bytes, int]],
    arg: str,
    value: Any,
    field: str,
):
    if isinstance(value, tuple) and value[0] is RAW:
        k, a = scripts.register_node_v2_args(**reg(conn_id="c2"))
        a[ARG_INDEX[arg]] = value[1]
    else:
        # a new connection, so a write would show in conn_id even for a valid-looking call
        k, a = scripts.register_node_v2_args(**reg(**{"conn_id": "c2", arg: value}))
    assert decode(await raw(scripts, k, a)) == [-1, field]
    assert await snapshot(redis) == populated

    if not (isinstance(value, tuple) and value[0] is RAW):
        with pytest.raises(ScriptRejected) as exc:
            await scripts.register_node_v2(**reg(**{"conn_id": "c2", arg: value}))
        assert exc.value.details == {"field": field}
        assert await snapshot(redis) == populated


async def test_valid_edge_values_are_accepted(redis: Redis, keys: Keys, scripts: Scripts):
    r = await scripts.register_node_v2(
        **reg(
            node_id="N_1.a-" + "x" * 58,
            capacity=256,
            region="r" * 64,
            lang_sets=[["pt-br", "zh-hans", "yue"], [f"l{c}" for c in "abcdefgh"]],
            services={},
            meta=None,
            ttl_ms=2**53 - 1,
            now_ms=1,
        )
    )
    assert r.created
    node = keys.node("N_1.a-" + "x" * 58)
    assert await redis.hget(node, "lang_sets") == (
        b'[["pt-br","yue","zh-hans"],["la","lb","lc","ld","le","lf","lg","lh"]]'
    )
    assert await redis.hget(node, "ttl_ms") == str(2**53 - 1).encode()
    assert await redis.pttl(node) > 2**52


# --- a node the protocol layer accepts is a node the script accepts --------------------
# tags of at most 35 characters: the script caps a tag at 35, the Python rule has no cap
LANG = st.from_regex(r"[a-z]{2,3}(-[a-z0-9]{2,8}){0,2}", fullmatch=True).filter(
    lambda s: len(s) <= 35
)


@pytest.fixture(scope="module")
def sync_scripts(redis_url: str) -> Iterator[Scripts]:
    """Hypothesis runs many examples in one test: a plain client, no per-example loop."""
    client = sync_redis_for_tests(redis_url)

    def clean() -> None:
        for key in client.keys(MINE):
            client.delete(key)

    clean()
    yield Scripts(client, Keys("test"), find_lua_dir())  # type: ignore[arg-type]
    clean()
    client.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    asr=st.lists(LANG, min_size=1, max_size=6),
    sem=st.lists(LANG, min_size=1, max_size=6),
    lang_sets=st.one_of(
        st.none(), st.lists(st.lists(LANG, min_size=2, max_size=5), min_size=1, max_size=4)
    ),
    node_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    region=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True),
    capacity=st.integers(1, 256),
)
def test_what_derive_capabilities_accepts_the_script_accepts(
    sync_scripts: Scripts,
    asr: list[str],
    sem: list[str],
    lang_sets: list[list[str]] | None,
    node_id: str,
    region: str,
    capacity: int,
) -> None:
    msg = NodeRegister(
        node_id=node_id,
        region=region,
        lang_sets=lang_sets,
        max_concurrent_jobs=capacity,
        capability_by_type=[
            CapabilityByType(type="asr", ready=True),
            CapabilityByType(type="semantic", ready=True),
        ],
        language_capabilities=LanguageCapabilities(asr_languages=asr, semantic_languages=sem),
    )
    try:
        caps = derive_capabilities(msg)
    except ValueError:
        return  # rejected by the protocol layer: nothing reaches the script
    k, a = sync_scripts.register_node_v2_args(
        node_id=node_id,
        now_ms=NOW,
        ttl_ms=TTL,
        region=caps.region,
        gpu_tier=caps.gpu_tier,
        lang_sets=caps.lang_sets,
        capacity=caps.capacity,
        services=caps.services,
        gateway_id="gw1",
        conn_id="c1",
    )
    reply = sync_scripts.script("register_node_v2")(keys=k, args=a)
    assert int(reply[0]) in (1, 2), reply
    stored = json.loads(sync_scripts.redis.hget(k[0], "lang_sets"))  # type: ignore[arg-type]
    assert stored == caps.lang_sets
