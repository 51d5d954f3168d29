"""Small helpers shared by the integration tests (polling Redis, raw node frames)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
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


async def node_pools(redis: Redis, keys: Keys, node_id: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(keys.node_pools(node_id))}


async def scores(redis: Redis, keys: Keys, node_id: str) -> dict[str, float | None]:
    return {
        shard: await redis.zscore(keys.pool(shard), node_id)
        for shard in await node_pools(redis, keys, node_id)
    }


async def lingua_keys(redis: Redis, keys: Keys) -> list[str]:
    """Every scheduler key of the cell except gateway liveness keys."""
    return sorted(
        k.decode()
        for k in await redis.keys(keys.prefix.replace("{", "[{]") + "*")
        if b":gateway:" not in k
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


@contextlib.asynccontextmanager
async def running(*agents: Any, register_timeout: float = 15.0) -> AsyncIterator[None]:
    """Node agents (``lingua_node_agent.NodeAgent``) running, each registered, then stopped."""
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        for a in agents:
            await asyncio.wait_for(a.registered.wait(), register_timeout)
        yield
    finally:
        for a in agents:
            a.stop(drain=False)
        await asyncio.gather(*tasks, return_exceptions=True)
