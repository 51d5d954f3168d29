"""select_node's cost does not grow with the number of shards covering the pair.

The whole cell is one Redis slot, so every command a select runs blocks every other script.
A select reads the pair index (``pairbest:<a>:<b>``: the shards by their lowest free score)
and the best shard, so the Redis commands of one call are the same for one shard and for
forty, for ``pack`` and for ``spread``, when no node is idle (the case where selection once
read every shard) as when all are. Counted with MONITOR: the ``lua`` lines of the test
database between two marks.

Also the issue's case as a plain regression: twenty nodes in one pool, the eight lowest
cooled down for tts, twelve free: a job needing tts gets one of the twelve.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest
from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts
from lingua_shared.testing import TEST_DB, needs_single_server, node_beat, node_registration

NOW = 1_700_000_000_000
TTL = 600_000
PER_SHARD = 8  # = candidates: spread's ties fill from one shard
LINE_RE = re.compile(rb"^\S+ \[(\d+) ([^\]]+)\] (.*)$")
MARK = "lingua-select-cost"


@pytest.fixture
async def lua_scripts(redis: Redis, keys: Keys) -> Scripts:
    # LINGUA_LUA_DIR runs the same test on another copy of the scripts (an older one, say)
    return await Scripts.load(redis, keys, os.environ.get("LINGUA_LUA_DIR"))


async def fleet(redis: Redis, keys: Keys, s: Scripts, shards: int, running: int) -> None:
    """``shards`` full shards of ``PER_SHARD`` nodes covering zh->en, each running ``running``
    of its 4 slots."""
    ids = [f"n{i:04d}" for i in range(shards * PER_SHARD)]
    async with redis.pipeline(transaction=False) as pipe:
        for n in ids:
            k, a = s.register_node_v2_args(
                **node_registration(n, now_ms=NOW, ttl_ms=TTL, capacity=4)
            )
            await s.script("register_node_v2")(keys=k, args=a, client=pipe)
        await pipe.execute()
    for n in ids:
        await redis.hset(keys.node(n), "running", running)
    async with redis.pipeline(transaction=False) as pipe:
        for n in ids:
            k, a = s.heartbeat_with_pool_assign_args(
                **node_beat(n, now_ms=NOW, max_shard_size=PER_SHARD)
            )
            await s.script("heartbeat_with_pool_assign")(keys=k, args=a, client=pipe)
        await pipe.execute()
    assert await redis.scard(keys.pair("zh", "en")) == shards


async def commands_of_one_select(
    redis_url: str, redis: Redis, s: Scripts, job_id: str, policy: str
) -> int:
    """The Redis commands one select_node call runs."""
    r = await s.job_create(
        request_key=f"{job_id}:0",
        job_id=job_id,
        now_ms=NOW,
        ttl_ms=TTL,
        fields={"session_id": f"s-{job_id}", "utterance_index": 0},
        audio="",
    )
    assert r.code == 1
    monitor_client = Redis.from_url(redis_url)
    lines: list[bytes] = []
    async with monitor_client.monitor() as monitor:
        assert monitor.connection is not None

        async def read() -> None:
            while True:
                line = await monitor.connection.read_response()  # type: ignore[union-attr]
                lines.append(line)
                if f'"{MARK}:done"'.encode() in line:
                    return

        reader = asyncio.create_task(read())
        await redis.echo(f"{MARK}:start")
        sel = await s.select_node(**select_args(job_id, policy))
        await redis.echo(f"{MARK}:done")
        await asyncio.wait_for(reader, 10)
    await monitor_client.aclose()
    assert sel.code == 1, sel
    inside, count = False, 0
    for line in lines:
        m = LINE_RE.match(line)
        if not m or int(m.group(1)) != TEST_DB:
            continue
        if m.group(2) == b"lua":
            count += inside
        elif f'"{MARK}:start"'.encode() in line:
            inside = True
        elif f'"{MARK}:done"'.encode() in line:
            inside = False
    return count


def select_args(job_id: str, policy: str, **over: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": 1,
        "now_ms": NOW + 10,
        "lease_ms": 3_000,
        "pair_src": "zh",
        "pair_tgt": "en",
        "services": ["asr", "semantic"],
        "policy": policy,
        "candidates": 8,
        "wait_until_ms": 0,
        "retry_ms": 100,
        "deadline_ms": 30_000,
        "tenant": "",
        **over,
    }


@needs_single_server
@pytest.mark.parametrize("running", [0, 1], ids=["idle", "none-idle"])
@pytest.mark.parametrize("policy", ["pack", "spread"])
async def test_commands_per_select_do_not_grow_with_the_shards(
    redis_url: str, redis: Redis, keys: Keys, lua_scripts: Scripts, policy: str, running: int
) -> None:
    counts = {}
    for shards in (1, 40):
        await redis.flushdb()
        await fleet(redis, keys, lua_scripts, shards, running)
        counts[shards] = await commands_of_one_select(
            redis_url, redis, lua_scripts, f"j{shards}", policy
        )
    assert counts[40] == counts[1], counts


async def test_eight_nodes_cooling_tts_hide_none_of_the_twelve_free(
    redis: Redis, keys: Keys, lua_scripts: Scripts
) -> None:
    s = lua_scripts
    ids = [f"n{i:02d}" for i in range(20)]
    for n in ids:
        await s.register_node_v2(**node_registration(n, now_ms=NOW, ttl_ms=TTL, capacity=2))
        await s.heartbeat_with_pool_assign(**node_beat(n, now_ms=NOW))
    for n in ids[8:]:  # twelve nodes with a job each: 0.5; the eight cooling ones idle
        await redis.hset(keys.node(n), "running", 1)
        await s.heartbeat_with_pool_assign(**node_beat(n, now_ms=NOW))
    for n in ids[:8]:
        r = await s.service_cooldown(node_id=n, service="tts", until_ms=NOW + 60_000, now_ms=NOW)
        assert r.until_ms == NOW + 60_000
    needs_tts = ["asr", "semantic", "tts"]
    for i, policy in enumerate(("pack", "spread") * 6):
        job = f"j{i}"
        r = await s.job_create(
            request_key=f"s{i}:0",
            job_id=job,
            now_ms=NOW,
            ttl_ms=TTL,
            fields={"session_id": f"s{i}", "utterance_index": 0},
            audio="",
        )
        assert r.code == 1
        sel = await s.select_node(**select_args(job, policy, services=needs_tts))
        assert sel.code == 1 and sel.node_id in ids[8:], (i, sel)
    # the twelve are full now; only a job not needing tts may take the cooling ones
    await s.job_create(
        request_key="x:0",
        job_id="jx",
        now_ms=NOW,
        ttl_ms=TTL,
        fields={"session_id": "x", "utterance_index": 0},
        audio="",
    )
    sel = await s.select_node(**select_args("jx", "pack", services=needs_tts))
    assert (sel.code, sel.reason) == (-4, "no_free_slot")
    sel = await s.select_node(**select_args("jx", "pack"))
    assert sel.code == 1 and sel.node_id in ids[:8]
