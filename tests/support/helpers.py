"""Small helpers of the suites: polling, a hand-made node's register frame, what Redis and a
service's /metrics say."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from lingua_shared.keys import Keys


async def eventually(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def register_frame(node_id: str | None = None, **extra: Any) -> str:
    msg: dict[str, Any] = {
        "type": "node_register",
        "version": "it-1.0",
        "capability_schema_version": "2.0",
        "platform": "linux",
        "hardware": {"cpu_cores": 8, "memory_gb": 32},
        "installed_models": [],
        "capability_by_type": [{"type": "asr", "ready": True}, {"type": "semantic", "ready": True}],
        "language_capabilities": {
            "asr_languages": ["en", "ja", "zh"],
            "semantic_languages": ["en", "ja", "zh"],
        },
        "features_supported": {},
        "accept_public_jobs": True,
        "region": "eu",
        "gpu_tier": "a100",
        "heartbeat_interval_ms": 200,
    }
    if node_id is not None:
        msg["node_id"] = node_id
    msg.update(extra)
    return json.dumps(msg)


async def node_state(redis: Redis, keys: Keys, node_id: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.node(node_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def node_ready(redis: Redis, keys: Keys, node_id: str) -> bool:
    """The node is registered, connected and ready (schedulable)."""
    h = await redis.hmget(keys.node(node_id), "status", "connected")
    return h[0] == b"ready" and h[1] == b"1"


async def node_pools(redis: Redis, keys: Keys, node_id: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(keys.node_pools(node_id))}


async def scores(redis: Redis, keys: Keys, node_id: str) -> dict[str, float | None]:
    return {
        shard: await redis.zscore(keys.pool(shard), node_id)
        for shard in await node_pools(redis, keys, node_id)
    }


# a gateway replica's own keys: its liveness, and its heartbeat marks (it sends an empty batch
# every 0.5 s when it has no beats, so node-manager writes them with no node at all)
REPLICA_KEY_PARTS = (b":gateway:", b":heartbeats:applied:", b":heartbeats:covered")


async def lingua_keys(redis: Redis, keys: Keys) -> list[str]:
    """Every scheduler key of the cell except a gateway replica's own keys."""
    return sorted(
        k.decode()
        for k in await redis.keys(keys.prefix.replace("{", "[{]") + "*")
        if not any(part in k for part in REPLICA_KEY_PARTS)
    )


def metric(stack: Any, proc: str, name: str, **labels: str) -> float:
    """A sample of a service's /metrics (0.0 when absent)."""
    with urllib.request.urlopen(f"{stack.procs[proc].base_url}/metrics", timeout=2) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
