"""The invariants of docs/architecture.md, checked against Redis at the end of a test."""

from __future__ import annotations

from redis.asyncio import Redis

from lingua_shared.keys import Keys


async def assert_idle_invariants(redis: Redis, keys: Keys) -> None:
    """Idle system: no reservation or running slot anywhere, no job holding a lease,
    reserved + running <= capacity, and every pool member has a live node record or is
    being cleaned (invariants 1-3)."""
    node_ids = [m.decode() for m in await redis.smembers(keys.nodes_all)]
    problems: list[str] = []
    for node_id in node_ids:
        h = await redis.hmget(keys.node(node_id), "capacity", "reserved", "running")
        if h[0] is None:
            continue  # expired, the sweeper's business
        cap, reserved, running = int(h[0]), int(h[1] or 0), int(h[2] or 0)
        if reserved + running > cap:
            problems.append(f"{node_id}: reserved {reserved} + running {running} > {cap}")
        if reserved or running:
            problems.append(f"{node_id}: idle but reserved={reserved} running={running}")
        leases = await redis.smembers(keys.node_jobs(node_id))
        if leases:
            problems.append(f"{node_id}: leases held by {sorted(x.decode() for x in leases)}")
    for raw in await redis.zrange(keys.timers, 0, -1):
        state = await redis.hget(keys.job(raw.decode()), "state")
        if state in (b"assigned", b"acked", b"waiting", b"queued"):
            problems.append(f"job {raw.decode()} still {state.decode()} with a timer")
    assert not problems, "invariants violated:\n  " + "\n  ".join(problems)


async def settle_idle(redis: Redis, keys: Keys, timeout: float = 10.0) -> None:
    """Wait until the idle invariants hold; on timeout fail with what is still wrong."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            await assert_idle_invariants(redis, keys)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
