"""The key schema (requirement N9): what the scripts create is exactly what ``Keys`` builds.

Every key lives under ``lingua:v1:`` and carries one ``{cell}`` hash tag, so all the keys one
script touches hash to one Redis Cluster slot (computed here with redis-py's ``key_slot``, the
same CRC16 as the cluster).
"""

from __future__ import annotations

import re
from itertools import permutations
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot

from lingua_shared import keys as keys_module
from lingua_shared.keys import ROOT, Keys, langset_id
from lingua_shared.scripts import Scripts

NOW = 1_700_000_000_000
TAG_RE = re.compile(r"\{([^{}]*)\}")

CELL = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True)
NODE_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
LABEL = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True)
LANG = st.from_regex(r"[a-z]{2,3}(-[a-z0-9]{2,8})?", fullmatch=True)


def documented_layout() -> list[tuple[re.Pattern[str], str]]:
    """``P <pattern>  <type>`` lines of the keys module docstring, as (regex, redis type)."""
    doc = keys_module.__doc__ or ""
    out = []
    for m in re.finditer(r"^\s+P (\S+)\s+(hash|set|zset|string|list)\b", doc, re.MULTILINE):
        # a request key is free text (``<session_id>:<index>`` or a client's request id)
        pattern = re.escape(m.group(1)).replace("<request_key>", ".+")
        pattern = re.sub(r"<[a-z_]+>", "[^:]+", pattern)
        out.append((re.compile(pattern), m.group(2)))
    return out


LAYOUT = documented_layout()


def documented_type(rest: str) -> str | None:
    for pattern, kind in LAYOUT:
        if pattern.fullmatch(rest):
            return kind
    return None


def all_builder_keys(
    k: Keys,
    node_id: str,
    langs: list[str],
    region: str,
    gpu: str,
) -> list[str]:
    ls = langset_id(langs)
    shard = Keys.shard_id(ls, region, gpu, 3)
    return [
        k.node(node_id),
        k.node_pools(node_id),
        k.nodes_all,
        k.nodes_expiry,
        k.nodes_connected,
        k.pool(shard),
        k.pool_group(ls, region, gpu),
        k.pools_index,
        k.pair(langs[0], langs[-1]),
        k.gateway(f"gw-{region}"),
        k.session(f"s-{node_id}"),
        k.session_results(f"s-{node_id}"),
        k.session_waiting(f"s-{node_id}"),
        k.session_outbox(f"s-{node_id}"),
        k.outbox,
        k.job(f"j-{node_id}"),
        k.job_audio(f"j-{node_id}"),
        k.idem(f"s-{node_id}:{len(langs)}"),
        k.node_jobs(node_id),
        k.timers,
        k.gaps,
        k.exclusions,
        k.unserved,
        k.stats_second(1_700_000_000),
        k.recent_errors,
        k.fallbacks,
        k.sessions_active,
    ]


def test_layout_docstring_is_parsed() -> None:
    # node, node pools, nodes x3, pool, poolgroup, index, pair, pair index, bands, gateway;
    # then the job path: session, session results, waiting, outbox, the outbox index, job,
    # job audio, idem, node jobs, timers, gaps, stats x2; then display stats: stats second,
    # recent errors, cell fallbacks, active sessions
    assert len(LAYOUT) == 29


def test_langset_id_is_the_scripts_group_naming() -> None:
    assert langset_id(["zh", "en", "ja", "en"]) == "en_ja_zh"
    assert langset_id(["pt-br", "en"]) == "en_pt-br"
    shard = Keys.shard_id("en_pt-br", "eu", "a100", 12)
    assert shard == "en_pt-br:eu:a100:12"
    assert Keys.parse_shard_id(shard) == ("en_pt-br", "eu", "a100", 12)


def test_prefix_and_tag() -> None:
    assert Keys().prefix == "lingua:v1:{main}:"
    assert Keys("eu-1").node("n1") == "lingua:v1:{eu-1}:node:n1"


@settings(max_examples=50, deadline=None)
@given(
    cell=CELL,
    node_id=NODE_ID,
    langs=st.lists(LANG, min_size=2, max_size=4, unique=True),
    region=LABEL,
    gpu=LABEL,
)
def test_every_built_key_is_documented_and_in_the_cells_slot(
    cell: str, node_id: str, langs: list[str], region: str, gpu: str
) -> None:
    k = Keys(cell)
    slot = key_slot(cell.encode())
    for key in all_builder_keys(k, node_id, langs, region, gpu):
        assert key.startswith(ROOT)
        assert key.startswith(k.prefix)
        assert TAG_RE.findall(key) == [cell], key  # exactly one hash tag: the cell
        assert key_slot(key.encode()) == slot, key
        assert documented_type(key[len(k.prefix) :]) is not None, key


@settings(max_examples=30, deadline=None)
@given(cell=CELL, node_id=NODE_ID)
def test_each_scripts_keys_share_one_slot(cell: str, node_id: str) -> None:
    s = Scripts.__new__(Scripts)
    s.keys = Keys(cell)
    calls: dict[str, Any] = {
        "register_node_v2_args": {
            "node_id": node_id,
            "now_ms": NOW,
            "ttl_ms": 1,
            "region": "eu",
            "gpu_tier": "a",
            "lang_sets": [["en", "zh"]],
            "capacity": 1,
            "services": {},
            "gateway_id": "g",
            "conn_id": "c",
        },
        "heartbeat_args": {"node_id": node_id, "conn_id": "c", "gateway_id": "g", "now_ms": NOW},
        "node_offline_args": {"node_id": node_id, "mode": "graceful", "now_ms": NOW},
    }
    for builder, kw in calls.items():
        script_keys, _ = getattr(s, builder)(**kw)
        assert {key_slot(x.encode()) for x in script_keys} == {key_slot(cell.encode())}, builder


async def test_keys_the_scripts_create_are_exactly_the_built_ones(
    redis: Redis, keys: Keys, scripts: Scripts
):
    # (node, lang_sets, region, gpu): covers multi-language sets, tags with '-', two groups,
    # and a second shard (max_shard_size=2 with three nodes in one group)
    nodes = [
        ("n1", [["zh", "en"], ["pt-br", "en", "ja"]], "eu", "a100"),
        ("n2", [["en", "zh"]], "eu", "a100"),
        ("n3", [["en", "zh"]], "eu", "a100"),
        ("n4", [["zh-hans", "yue"]], "us-east.1", "t4"),
    ]
    for node_id, sets, region, gpu in nodes:
        await scripts.register_node_v2(
            node_id=node_id,
            now_ms=NOW,
            ttl_ms=60_000,
            region=region,
            gpu_tier=gpu,
            lang_sets=sets,
            capacity=2,
            services={},
            gateway_id="gw1",
            conn_id=f"c-{node_id}",
        )
        r = await scripts.heartbeat_with_pool_assign(
            node_id=node_id, conn_id=f"c-{node_id}", gateway_id="gw1", now_ms=NOW, max_shard_size=2
        )
        assert r.alive

    expected = {keys.nodes_all, keys.nodes_expiry, keys.nodes_connected, keys.pools_index}
    for node_id, sets, region, gpu in nodes:
        expected |= {keys.node(node_id), keys.node_pools(node_id)}
        for langs in sets:
            ls = langset_id(langs)
            expected.add(keys.pool_group(ls, region, gpu))
            expected.add(keys.pool(Keys.shard_id(ls, region, gpu, 0)))
            expected |= {keys.pair(a, b) for a, b in permutations(langs, 2)}
            expected |= {keys.pair_best(a, b) for a, b in permutations(langs, 2)}
    expected.add(keys.pool(Keys.shard_id("en_zh", "eu", "a100", 1)))

    created = {x.decode() for x in await redis.keys(keys.prefix + "*")}
    assert created == expected

    slot = key_slot(keys.cell.encode())
    for key in created:
        assert key.startswith("lingua:v1:{test}:")
        assert TAG_RE.findall(key) == ["test"], key
        assert key_slot(key.encode()) == slot, key
        kind = documented_type(key[len(keys.prefix) :])
        assert kind is not None, f"{key} matches no documented key"
        assert (await redis.type(key)).decode() == kind, key

    # the shard ids the scripts store are the ids Keys builds keys from
    stored = {x.decode() for x in await redis.smembers(keys.pools_index)}
    for shard_id in stored:
        assert keys.pool(shard_id) in created
        langset, region, gpu, _ = Keys.parse_shard_id(shard_id)
        assert keys.pool_group(langset, region, gpu) in created
