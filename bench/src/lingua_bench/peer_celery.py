"""The peer: the scheduling decision done the way a Python team would otherwise do it.

A Celery app on the same RabbitMQ (broker) with the Redis result backend; its task runs our
real ``select_node.lua`` and releases the slot again (:mod:`lingua_bench._base_celery_app`).
A separate client process calls it with ``apply_async().get()``, one in flight, ``n`` times
after a warm-up. The pool is 1,000 registered nodes of one pair. Celery's worker pools
``prefork``, ``threads`` and ``solo`` (one worker process each, ``-c 1``) are tried in turn;
the fastest by p50 is reported as ``pool`` with its figures, the others under ``pools``.

``cpu_ms_per_task``: the CPU the timed tasks cost (after the warm-up), per task: the worker
(its whole process tree: a prefork pool's child does the work), the client and RabbitMQ
(every ``beam.smp``), from ``/proc/<pid>/stat`` read by the client right before the first
and after the last timed task. Redis (the result backend and the script) is read too and
reported beside it in ``cpu_ms_per_task_by_process``, not in the sum. RabbitMQ and Redis
are shared with the rest of the machine: their figures include whatever else ran.

Cleanup: workers are stopped by PID; the task queue and exchange, the node cell and the
result keys (all named after the run's prefix) are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from typing import Any

from redis.asyncio import Redis

from lingua_bench._base_common import (
    DEFAULT_AMQP_URL,
    DEFAULT_REDIS_URL,
    BenchError,
    Child,
    delete_bus,
    delete_cell,
    delete_keys,
    emit,
    log,
    python_module,
    register_pool,
    run_async,
    unique_prefix,
)
from lingua_shared.keys import Keys
from lingua_shared.scripts import Scripts

APP = "lingua_bench._base_celery_app"
POOLS = ("prefork", "threads", "solo")
POOL_NODES = 1_000
STOP_GRACE_S = 3.0


def celery_broker_url(amqp_url: str) -> str:
    """Celery reads ``amqp://host:5672/`` as the vhost ``""``; aio-pika reads it as ``/``."""
    base, _, vhost = amqp_url.partition("://")[2].partition("/")
    scheme = amqp_url.partition("://")[0]
    return f"{scheme}://{base}/{vhost or '/'}"


async def _setup(redis_url: str, cell: str, nodes: int) -> None:
    redis = Redis.from_url(redis_url)
    try:
        s = await Scripts.load(redis, Keys(cell))
        await register_pool(s, redis, nodes)
    finally:
        await redis.aclose()


async def _cleanup(redis_url: str, amqp_url: str, cell: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await delete_cell(redis, cell)
        await delete_keys(redis, f"{cell}:*")  # result backend keys (global_keyprefix)
    finally:
        await redis.aclose()
    await delete_bus(amqp_url, [cell], [cell])


def _one_pool(pool: str, n: int, warmup: int, env: dict[str, str], tag: str) -> dict[str, Any]:
    worker = Child(
        f"celery worker ({pool})",
        python_module(
            "celery",
            "-A",
            APP,
            "worker",
            f"--pool={pool}",
            "-c",
            "1",
            "-Q",
            env["BENCHBASE_CELERY_QUEUE"],
            "-n",
            f"{tag}@%h",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ),
        env,
    )
    try:
        done = subprocess.run(
            python_module(
                APP,
                "client",
                "--n",
                str(n),
                "--warmup",
                str(warmup),
                "--tag",
                tag,
                "--worker-pid",
                str(worker.pid),
            ),
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120 + n * 0.1,
            check=False,
        )
    finally:
        # nothing is in flight now; Celery's event loop notices SIGTERM only when its poll
        # times out (up to 10 s), so a short grace, then the worker's group is killed
        worker.stop(grace_s=STOP_GRACE_S)
    if done.returncode != 0:
        raise BenchError(f"celery client ({pool}) failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(
    redis_url: str = DEFAULT_REDIS_URL,
    amqp_url: str = DEFAULT_AMQP_URL,
    n: int = 2000,
    pools: tuple[str, ...] = POOLS,
    warmup: int = 100,
) -> dict[str, Any]:
    """``{"decision": {"p50_ms", "p99_ms"}, "pool": str, "pools": {...}}``."""
    if n < 1 or not pools or any(p not in POOLS for p in pools):
        raise ValueError(f"need n >= 1 and pools among {POOLS} (got {n}, {pools})")
    cell = unique_prefix("celery")
    env = {
        "BENCHBASE_CELERY_QUEUE": cell,
        "BENCHBASE_CELERY_CELL": cell,
        "BENCHBASE_CELERY_BROKER": celery_broker_url(amqp_url),
        "BENCHBASE_CELERY_BACKEND": redis_url,
        "BENCHBASE_CELERY_REDIS": redis_url,
        # the worker runs as root here: Celery's SecurityWarning is noise in the run's log
        "PYTHONWARNINGS": "ignore::UserWarning:celery.platforms",
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        run_async(_setup(redis_url, cell, POOL_NODES))
        for i, pool in enumerate(pools):
            results[pool] = _one_pool(pool, n, warmup, env, f"{cell}-{i}")
            log("peer_celery", pool=pool, **results[pool])
    finally:
        run_async(_cleanup(redis_url, amqp_url, cell))
    best = min(results, key=lambda p: results[p]["p50_ms"])
    return {
        "decision": {"p50_ms": results[best]["p50_ms"], "p99_ms": results[best]["p99_ms"]},
        "cpu_ms_per_task": results[best]["cpu_ms_per_task"],
        "cpu_ms_per_task_by_process": results[best]["cpu_ms_per_task_by_process"],
        "pool": best,
        "pools": results,
        "nodes": POOL_NODES,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    ap.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--pools", default=",".join(POOLS), help="comma-separated worker pools")
    args = ap.parse_args()
    emit(run(args.redis_url, args.amqp_url, args.n, tuple(args.pools.split(","))))


if __name__ == "__main__":
    main()
