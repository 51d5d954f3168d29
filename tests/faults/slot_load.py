"""Concurrent dispatchers doing the whole slot cycle through the real job scripts (S1-S3).

``n_tasks`` asyncio tasks each play a dispatcher *and* its nodes: create a job, select a node
(reserve), then ack + finish it, or take it back and fail it. A monitor reads every node
record while they run and counts ``reserved + running > capacity``; the end state must hold
no reservation and no running slot.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts

NOW = 1_700_000_000_000
TTL = 600_000_000


@dataclass
class LoadResult:
    selects: int = 0
    reserved: int = 0
    no_slot: int = 0
    samples: int = 0
    violations: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


async def add_nodes(scripts: Scripts, n: int, capacity: int) -> list[str]:
    ids = [f"s-node-{i:03d}" for i in range(n)]
    for node_id in ids:
        await scripts.register_node_v2(
            node_id=node_id, now_ms=NOW, ttl_ms=TTL, region="eu", gpu_tier="a100",
            lang_sets=[["en", "zh"]], capacity=capacity,
            services={"asr": ["en", "zh"], "semantic": ["en", "zh"]},
            gateway_id="gw-s", conn_id=f"c-{node_id}",
        )  # fmt: skip
        r = await scripts.heartbeat_with_pool_assign(
            node_id=node_id, conn_id=f"c-{node_id}", gateway_id="gw-s", now_ms=NOW
        )
        assert r.alive
    return ids


async def run_load(
    scripts: Scripts,
    monitor_redis: Redis,
    keys: Keys,
    nodes: list[str],
    *,
    selects: int,
    n_tasks: int = 32,
    seed: int = 1,
    hold: int = 8,
    retry_errors: tuple[type[BaseException], ...] = (),
    res: LoadResult | None = None,
) -> LoadResult:
    """Run ``selects`` select_node calls over ``n_tasks`` tasks, each holding up to ``hold``
    reservations (32 x 8 > 50 x 4: the slots run out and selection must refuse); errors in
    ``retry_errors`` reach us (counted by name) and the step is retried. Pass ``res`` to watch
    the figures while the load runs."""
    res = res if res is not None else LoadResult()
    left = [selects]
    stop = asyncio.Event()
    t0 = time.monotonic()

    async def call(step):  # type: ignore[no-untyped-def]
        while True:
            try:
                return await step()
            except retry_errors as exc:
                res.errors[_error_name(exc)] += 1
                await asyncio.sleep(0.02)

    async def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        session = f"sess-{w}"
        await monitor_redis.hset(
            keys.session(session), mapping={"gateway_id": "gw-s", "conn_id": f"cs-{w}"}
        )
        index = 0
        outstanding: list[tuple[str, str, int]] = []  # reserved, not yet ended
        while left[0] > 0:
            left[0] -= 1
            job_id = f"j-{uuid.uuid4().hex[:16]}"
            now = NOW + int((time.monotonic() - t0) * 1000)
            created = await call(
                lambda job_id=job_id, index=index, now=now: scripts.job_create(
                    request_key=f"{session}:{index}", job_id=job_id, now_ms=now, ttl_ms=TTL,
                    fields={"session_id": session, "utterance_index": index}, audio="QUJD",
                )
            )  # fmt: skip
            job_id = created.value  # on a replay: the job the first call created
            index += 1
            sel = await call(
                lambda job_id=job_id, now=now: scripts.select_node(
                    job_id=job_id, attempt=1, now_ms=now, lease_ms=60_000, pair_src="zh",
                    pair_tgt="en", services=["asr", "semantic"], policy="pack", candidates=8,
                    wait_until_ms=0, retry_ms=100,
                )
            )  # fmt: skip
            res.selects += 1
            if sel.code != 1:
                res.no_slot += 1
                await call(lambda job_id=job_id, now=now: _fail(scripts, job_id, now))
                if outstanding:  # the slots ran out: end one of ours before the next try
                    await complete(*outstanding.pop(0), rng)
                continue
            res.reserved += 1
            outstanding.append((job_id, sel.node_id, now))
            if len(outstanding) > hold:
                await complete(*outstanding.pop(0), rng)
        while outstanding:
            await complete(*outstanding.pop(0), rng)

    async def complete(job_id: str, node: str, now: int, rng: random.Random) -> None:
        """End a reserved job: ack + finish (80 %), or take it back and fail it."""
        if rng.random() < 0.8:
            await call(
                lambda: scripts.job_ack(
                    job_id=job_id, attempt=1, node_id=node, now_ms=now, deadline_ms=60_000
                )
            )
            await asyncio.sleep(rng.random() * 0.002)  # hold the running slot a little
            await call(
                lambda: scripts.job_finish(
                    job_id=job_id, attempt=1, node_id=node, now_ms=now, outcome="done",
                    payload={"type": "translation_result", "job_id": job_id},
                    gap_ms=60_000, session_ttl_ms=TTL,
                )
            )  # fmt: skip
        else:
            await call(
                lambda: scripts.job_release(
                    job_id=job_id, attempt=1, reason="ack_timeout", now_ms=now, max_attempts=1
                )
            )
            await call(lambda: _fail(scripts, job_id, now))

    async def monitor() -> None:
        while not stop.is_set():
            try:
                await _sample(monitor_redis, keys, nodes, res)
            except retry_errors as exc:
                res.errors["monitor:" + _error_name(exc)] += 1
            await asyncio.sleep(0.01)

    mon = asyncio.create_task(monitor())
    try:
        await asyncio.gather(*(worker(w) for w in range(n_tasks)))
    finally:
        stop.set()
        await mon
    res.seconds = time.monotonic() - t0
    return res


async def _fail(scripts: Scripts, job_id: str, now: int) -> None:
    await scripts.job_finish(
        job_id=job_id, attempt=0, node_id="", now_ms=now, outcome="failed",
        payload={"type": "error", "code": "NO_AVAILABLE_NODE"}, gap_ms=60_000,
        session_ttl_ms=TTL,
    )  # fmt: skip


async def _sample(redis: Redis, keys: Keys, nodes: list[str], res: LoadResult) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for node_id in nodes:
            pipe.hmget(keys.node(node_id), "capacity", "reserved", "running")
        rows = await pipe.execute()
    for cap, reserved, running in rows:
        res.samples += 1
        if int(reserved or 0) + int(running or 0) > int(cap) or int(reserved or 0) < 0:
            res.violations += 1


async def end_state(redis: Redis, keys: Keys, nodes: list[str]) -> dict[str, int]:
    """Sums over every node once idle, and jobs still holding a slot."""
    reserved = running = leases = 0
    for node_id in nodes:
        h = await redis.hmget(keys.node(node_id), "reserved", "running")
        reserved += int(h[0] or 0)
        running += int(h[1] or 0)
        leases += await redis.scard(keys.node_jobs(node_id))
    return {"reserved": reserved, "running": running, "leases": leases}


async def duplicate_jobs(redis: Redis, keys: Keys) -> tuple[int, int]:
    """(job records, request keys that own more than one job record)."""
    per_key: Counter[str] = Counter()
    pattern = keys.prefix.replace("{", "[{]") + "job:*"
    async for raw in redis.scan_iter(match=pattern, count=1000):
        if raw.endswith(b":audio"):
            continue
        rk = await redis.hget(raw, "request_key")
        per_key[(rk or b"").decode()] += 1
    return sum(per_key.values()), sum(1 for n in per_key.values() if n > 1)


def _error_name(exc: BaseException) -> str:
    return type(exc).__name__
