"""The expiry sweeper judges deadlines behind the gateways' heartbeat watermark (real Redis).

A node past its deadline by the clock is held while its gateway replica is alive and has not
had its beats applied up to that deadline (they may be waiting at the gateway or on the bus);
it is expired once the watermark passes, at once when no live gateway holds back, and after
``LINGUA_NODE_EXPIRY_HOLD_MAX_MS`` whatever the watermark says.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

from redis.asyncio import Redis

from lingua_node_manager.metrics import Metrics
from lingua_node_manager.sweeper import WATERMARK_SLACK_MS, expiry_horizon, sweep_once
from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts, find_lua_dir
from lingua_shared.settings import NODE_RECORD_GRACE_MS, Settings
from lingua_shared.testing import node_registration

NOW = 1_700_000_000_000
TTL = 3_000
MARK = {"ttl_ms": 600_000}


def infra(redis: Redis, keys: Keys, scripts: Scripts, hold_max_ms: int = 30_000):
    settings = Settings(node_expiry_hold_max_ms=hold_max_ms)
    return SimpleNamespace(redis=redis, keys=keys, scripts=scripts, settings=settings)


async def register(scripts: Scripts, node_id: str, gateway_id: str) -> None:
    await scripts.register_node_v2(
        **node_registration(node_id, gateway_id=gateway_id, now_ms=NOW, ttl_ms=TTL)
    )


async def watermark(scripts: Scripts, gateway_id: str, seq: int, covers_ms: int) -> None:
    await scripts.heartbeats_applied(gateway_id=gateway_id, seq=seq, covers_ms=covers_ms, **MARK)


async def test_a_node_is_held_while_its_live_gateway_is_behind_then_expired(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    inf, metrics = infra(redis, keys, scripts), Metrics()
    await register(scripts, "n1", "gw-a")
    await redis.set(keys.gateway("gw-a"), "1")  # the replica's liveness key
    deadline = NOW + TTL
    # the clock is 5 s past the deadline, but gw-a's beats are applied only up to 1 s before
    await watermark(scripts, "gw-a", 1, deadline - 1_000)
    assert await sweep_once(inf, metrics, now=deadline + 5_000) == 0
    assert await redis.exists(keys.node("n1"))
    assert metrics.expiries_held._value.get() == 1
    assert metrics.expiry_hold._value.get() == (5_000 + 1_000 + WATERMARK_SLACK_MS) / 1000
    # its beats applied past the deadline (and the slack): no beat came, the node expires
    await watermark(scripts, "gw-a", 2, deadline + WATERMARK_SLACK_MS)
    assert await sweep_once(inf, metrics, now=deadline + 6_000) == 1
    assert not await redis.exists(keys.node("n1"))
    assert await redis.zscore(keys.nodes_expiry, "n1") is None


async def test_a_gateway_without_liveness_holds_nothing_and_its_mark_is_dropped(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    inf, metrics = infra(redis, keys, scripts), Metrics()
    await register(scripts, "n1", "gw-dead")
    await watermark(scripts, "gw-dead", 1, NOW)  # far behind, but the replica is gone
    now = NOW + TTL + 40_000
    assert await sweep_once(inf, metrics, now=now) == 1
    # older than the longest hold: removed from the watermarks
    assert await redis.hget(keys.heartbeats_covered, "gw-dead") is None


async def test_a_stuck_pipeline_holds_no_longer_than_the_maximum(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    inf, metrics = infra(redis, keys, scripts, hold_max_ms=10_000), Metrics()
    await register(scripts, "n1", "gw-a")
    await redis.set(keys.gateway("gw-a"), "1")
    await watermark(scripts, "gw-a", 1, NOW)  # never moves again
    deadline = NOW + TTL
    assert await sweep_once(inf, metrics, now=deadline + 9_000) == 0  # held
    assert await sweep_once(inf, metrics, now=deadline + 10_000) == 1  # the hold's maximum
    assert metrics.expiry_hold._value.get() == 10.0


async def test_no_watermark_or_no_hold_judges_by_the_clock(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    # gateways that send no watermark (none known): the clock decides
    inf = infra(redis, keys, scripts)
    assert await expiry_horizon(inf, Metrics(), NOW) == NOW
    # holding switched off: the clock decides whatever the watermarks say
    await redis.set(keys.gateway("gw-a"), "1")
    await watermark(scripts, "gw-a", 1, NOW - 20_000)
    assert await expiry_horizon(infra(redis, keys, scripts, hold_max_ms=0), Metrics(), NOW) == NOW
    # the oldest live watermark decides, less the slack
    await redis.set(keys.gateway("gw-b"), "1")
    await watermark(scripts, "gw-b", 1, NOW - 2_000)
    assert await expiry_horizon(inf, Metrics(), NOW) == NOW - 20_000 - WATERMARK_SLACK_MS


async def test_the_watermark_only_moves_with_a_newer_batch(
    redis: Redis, keys: Keys, scripts: Scripts
) -> None:
    await watermark(scripts, "gw-a", 5, NOW)
    await watermark(scripts, "gw-a", 4, NOW + 1_000)  # an older batch applied late
    assert await redis.hget(keys.heartbeats_covered, "gw-a") == str(NOW).encode()
    await watermark(scripts, "gw-a", 6, 0)  # a batch with no watermark moves the mark only
    assert await redis.hget(keys.heartbeats_covered, "gw-a") == str(NOW).encode()
    assert await redis.get(keys.heartbeats_applied("gw-a")) == b"6"


def test_the_record_grace_is_the_same_in_lua_and_python() -> None:
    common = (find_lua_dir() / "lib" / "common.lua").read_text()
    m = re.search(r"^local NODE_RECORD_GRACE_MS = (\d+)$", common, re.MULTILINE)
    assert m and int(m.group(1)) == NODE_RECORD_GRACE_MS
    assert Settings().node_expiry_hold_max_ms < NODE_RECORD_GRACE_MS
