"""Language codes with subtags and scripts (``pt-br``, ``zh-hant``, ``sr-latn``, ``yue``,
``es-419``) work everywhere: a node declaring generated codes, as a peer may spell them, is
derived by the gateway's rule, registered and pooled by the real Lua scripts, found by
``select_node`` for a pair of its codes, totalled by ``pools_summary`` / ``nodes_summary``,
and shown by the stats snapshot and ``/api/v1/pools``; invalid codes get the typed error and
write nothing (docs/protocol.md §2.3)."""

from __future__ import annotations

import asyncio
import types
from itertools import permutations
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from lingua_gateway.metrics import Metrics as GatewayMetrics
from lingua_gateway.node_capabilities import NodeProfile
from lingua_gateway.node_registration import NodeRegistrar
from lingua_gateway.session_spec import lang_code
from lingua_shared.errors import InvalidCapabilitySchema, InvalidMessage, ScriptRejected
from lingua_shared.keys import Keys, langset_id
from lingua_shared.poolview import read_pool_view
from lingua_shared.protocol import ErrorCode
from lingua_shared.protocol.node import CapabilityByType, LanguageCapabilities, NodeRegister
from lingua_shared.scripts import Scripts
from lingua_shared.settings import Settings
from lingua_shared.testing import key_snapshot, redis_for_tests
from lingua_stats.app import create_app
from lingua_stats.snapshot import build_snapshot
from lingua_stats.snapshot_model import CatalogView, Snapshot
from tests.support.lang_codes import NEAR_MISS_LANG, VALID_LANG, as_sent

NOW = 1_700_000_000_000
TTL = 600_000
KEYS = Keys("test")
SETTINGS = Settings(cell="test")
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def registration(langs: list[str], explicit_sets: bool) -> NodeRegister:
    """A lingua-style registration (ASR and Semantic ready) declaring ``langs`` as sent."""
    return NodeRegister(
        node_id="n-lang",
        region="eu",
        gpu_tier="a100",
        lang_sets=[langs] if explicit_sets else None,
        capability_by_type=[
            CapabilityByType(type="asr", ready=True),
            CapabilityByType(type="semantic", ready=True),
        ],
        language_capabilities=LanguageCapabilities(asr_languages=langs, semantic_languages=langs),
    )


async def clean(redis: Redis) -> None:
    for key in await redis.keys(KEYS.prefix + "*"):
        await redis.delete(key)


async def register_and_pool(scripts: Scripts, reg: NodeRegister) -> list[list[str]]:
    """What the gateway derives (its NodeProfile) and node-manager then writes."""
    caps = NodeProfile(SETTINGS, GatewayMetrics()).derive(reg)
    await scripts.register_node_v2(
        node_id="n-lang",
        now_ms=NOW,
        ttl_ms=TTL,
        region=caps.region,
        gpu_tier=caps.gpu_tier,
        lang_sets=caps.lang_sets,
        capacity=caps.capacity,
        services=caps.services,
        gateway_id="gw-1",
        conn_id="c-1",
    )
    beat = await scripts.heartbeat_with_pool_assign(
        node_id="n-lang", conn_id="c-1", gateway_id="gw-1", now_ms=NOW
    )
    assert beat.alive and beat.pools_changed
    return caps.lang_sets


async def everywhere(redis_url: str, sent: list[str], codes: list[str], explicit: bool) -> None:
    redis = redis_for_tests(redis_url)
    try:
        await clean(redis)
        scripts = await Scripts.load(redis, KEYS)
        assert await register_and_pool(scripts, registration(sent, explicit)) == [codes]

        shard = f"{langset_id(codes)}:eu:a100:0"
        assert {m.decode() for m in await redis.smembers(KEYS.pools_index)} == {shard}
        for a, b in permutations(codes, 2):
            assert await redis.smembers(KEYS.pair(a, b)) == {shard.encode()}

        # selection finds the node for a pair of its codes
        created = await scripts.job_create(
            request_key="s1:0",
            job_id="j1",
            now_ms=NOW,
            ttl_ms=TTL,
            fields={"session_id": "s1", "utterance_index": 0},
            audio="QUJD",
        )
        assert created.code == 1
        picked = await scripts.select_node(
            job_id="j1",
            attempt=1,
            now_ms=NOW + 1,
            lease_ms=3_000,
            pair_src=codes[-1],
            pair_tgt=codes[0],
            services=["asr", "semantic"],
            policy="pack",
            candidates=8,
            wait_until_ms=0,
            retry_ms=100,
        )
        assert (picked.code, picked.node_id, picked.shard_id) == (1, "n-lang", shard)

        # the summaries, the snapshot and the live pool view all show it
        (row,) = await scripts.pools_summary(shard_ids=[shard])
        assert (row.members, row.schedulable, row.capacity) == (1, 1, 4)
        nodes = await scripts.nodes_summary(node_ids=["n-lang"])
        assert (nodes.alive, nodes.schedulable, nodes.unschedulable) == (1, 1, [])
        snap = await build_snapshot(scripts, SETTINGS, CatalogView(), NOW + 2)
        assert [(p.langset, p.members, p.schedulable) for p in snap.pools] == [(codes, 1, 1)]
        assert [r.lang_sets for r in snap.node_list] == [[codes]]
        assert snap.invalid_records.total == 0
        view = await read_pool_view(redis, KEYS, NOW + 2)
        assert [(g.langset, [s.shard_id for s in g.shards]) for g in view.groups] == [
            (codes, [shard])
        ]
        assert view.invalid_records == 0
    finally:
        await clean(redis)
        await redis.aclose()


@PROPERTY
@given(
    codes=st.lists(VALID_LANG, min_size=2, max_size=5, unique=True).map(sorted),
    explicit=st.booleans(),
    data=st.data(),
)
@example(codes=["en", "pt-br"], explicit=False, data=None)
@example(codes=["sr-latn", "yue", "zh-hant"], explicit=True, data=None)
def test_a_node_with_generated_codes_is_everywhere(
    redis_url: str, codes: list[str], explicit: bool, data: Any
) -> None:
    sent = [data.draw(as_sent(c)) for c in codes] if data is not None else codes
    asyncio.run(everywhere(redis_url, sent, codes, explicit))


class _Conn:
    """The registering connection NodeRegistrar needs, for a registration refused up front."""

    conn_id, node_id, principal = "c-1", None, None
    out = types.SimpleNamespace(send=lambda *_: None)

    def bind(self, node_id: str) -> None: ...
    def check_identity(self, node_id: str) -> None: ...
    def send_error(self, err: Any) -> None: ...


async def refused(redis_url: str, bad: str) -> None:
    redis = redis_for_tests(redis_url)
    try:
        await clean(redis)
        scripts = await Scripts.load(redis, KEYS)
        # the gateway: INVALID_CAPABILITY_SCHEMA, no ack, nothing published
        deps = types.SimpleNamespace(
            settings=SETTINGS,
            metrics=GatewayMetrics(),
            register=None,
            beats=None,
            publisher=None,
            cells=SETTINGS.cell_map(),
        )
        profile = NodeProfile(SETTINGS, deps.metrics)
        registrar = NodeRegistrar(_Conn(), profile, deps)  # type: ignore[arg-type]
        for explicit in (False, True):
            with pytest.raises(InvalidCapabilitySchema) as exc:
                await registrar.on_register(registration(["en", bad], explicit))
            assert exc.value.code == ErrorCode.INVALID_CAPABILITY_SCHEMA
        # a session naming it: INVALID_MESSAGE
        with pytest.raises(InvalidMessage) as msg:
            lang_code(bad, "src_lang")
        assert msg.value.code == ErrorCode.INVALID_MESSAGE

        # the scripts refuse it too, by argument name, and write nothing
        await scripts.register_node_v2(
            node_id="n-ok",
            now_ms=NOW,
            ttl_ms=TTL,
            region="eu",
            gpu_tier="a100",
            lang_sets=[["en", "zh"]],
            capacity=4,
            services={},
            gateway_id="gw-1",
            conn_id="c-ok",
        )
        before = await key_snapshot(redis)
        with pytest.raises(ScriptRejected) as rej:
            await scripts.register_node_v2(
                node_id="n-bad",
                now_ms=NOW,
                ttl_ms=TTL,
                region="eu",
                gpu_tier="a100",
                lang_sets=[["en", bad]],
                capacity=4,
                services={},
                gateway_id="gw-1",
                conn_id="c-bad",
            )
        assert rej.value.details == {"field": "lang_sets"}
        assert await key_snapshot(redis) == before
        with pytest.raises(ScriptRejected) as rej:
            await scripts.heartbeat_with_pool_assign(
                node_id="n-ok",
                conn_id="c-ok",
                gateway_id="gw-1",
                now_ms=NOW + 1,
                lang_sets=[["en", bad]],
            )
        assert rej.value.details == {"field": "lang_sets"}
        assert await key_snapshot(redis) == before
        await scripts.job_create(
            request_key="s1:0",
            job_id="j1",
            now_ms=NOW,
            ttl_ms=TTL,
            fields={"session_id": "s1", "utterance_index": 0},
            audio="QUJD",
        )
        before = await key_snapshot(redis)
        with pytest.raises(ScriptRejected) as rej:
            await scripts.select_node(
                job_id="j1",
                attempt=1,
                now_ms=NOW + 1,
                lease_ms=3_000,
                pair_src=bad,
                pair_tgt="en",
                services=["asr"],
                policy="pack",
                candidates=8,
                wait_until_ms=0,
                retry_ms=100,
            )
        assert rej.value.details == {"field": "pair_src"}
        assert await key_snapshot(redis) == before
    finally:
        await clean(redis)
        await redis.aclose()


@PROPERTY
@given(bad=NEAR_MISS_LANG)
@example(bad="pt:br")
@example(bad="e")
@example(bad="\u212aa")  # KELVIN SIGN + a: lowercases to "ka", but was never ASCII
def test_an_invalid_code_gets_the_typed_error_and_writes_nothing(redis_url: str, bad: str) -> None:
    asyncio.run(refused(redis_url, bad))


def test_a_spelling_the_scripts_never_see_is_refused_by_them() -> None:
    """Scripts take codes as the rule stores them: ``PT-BR`` is the gateway's to normalise."""
    assert lang_code(" PT_br ", "src_lang") == "pt-br"
    assert lang_code("zh-Hant", "tgt_lang") == "zh-hant"


CODES = [["en", "pt-br"], ["sr-latn", "yue", "zh-hant"], ["es-419", "zh-hant-tw"]]


async def test_the_stats_service_serves_subtagged_codes(
    redis_url: str, amqp_url: str, bus_prefix: str, redis: Redis, scripts: Scripts
) -> None:
    """Regression: one ``pt-br`` node made every pools_summary call fail, so no snapshot
    was ever built: /api/v1/stats answered 503 and a new stats pod stayed not ready."""
    for i, langs in enumerate(CODES):
        await scripts.register_node_v2(
            node_id=f"n{i}",
            now_ms=NOW,
            ttl_ms=TTL,
            region="eu",
            gpu_tier="a100",
            lang_sets=[langs],
            capacity=4,
            services={"asr": langs, "semantic": langs},
            gateway_id="gw-1",
            conn_id=f"c-{i}",
        )
        await scripts.heartbeat_with_pool_assign(
            node_id=f"n{i}", conn_id=f"c-{i}", gateway_id="gw-1", now_ms=NOW
        )
    settings = Settings(redis_url=redis_url, amqp_url=amqp_url, bus_prefix=bus_prefix, cell="test")
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://stats") as client,
    ):
        assert (await client.get("/readyz")).status_code == 200
        snap = Snapshot.model_validate((await client.get("/api/v1/stats")).json())
        assert sorted(p.langset for p in snap.pools) == sorted(CODES)
        assert snap.nodes.schedulable == 3 and snap.invalid_records.total == 0
        pools = (await client.get("/api/v1/pools")).json()
        assert sorted(g["langset"] for g in pools["groups"]) == sorted(CODES)
        nodes = (await client.get("/api/v1/nodes")).json()
        assert sorted(n["lang_sets"] for n in nodes) == sorted([c] for c in CODES)
