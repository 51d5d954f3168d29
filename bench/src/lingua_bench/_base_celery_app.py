"""The Celery side of :mod:`lingua_bench.peer_celery`: the app, its one task, and the client
process that calls it.

Configured from the environment (``BENCHBASE_CELERY_*``) because the worker is started by
``celery -A lingua_bench._base_celery_app worker``, which imports this module. The app is
what a Python team would write: RabbitMQ as broker, the Redis result backend, defaults
otherwise, minus the chatter a benchmark does not need (no events, no remote control, no
gossip) so that nothing but the task crosses the broker.

The task body runs our real ``select_node.lua`` (through lingua_shared's call path, on
redis-py's synchronous client: Celery workers are synchronous) and then releases the slot
with ``job_release``: one scheduling decision that leaves the pool as it found it.

``python -m lingua_bench._base_celery_app client --n N`` is the client process: it creates
the jobs (untimed), warms up, then times ``apply_async().get()`` one at a time and prints
``{"p50_ms", "p99_ms", ...}`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from lingua_shared.keys import Keys
from lingua_shared.scripts import (
    ScriptCode,
    bind,
    find_lua_dir,
    job_create,
    job_release,
    run_sync,
    select_node,
)

ENV = "BENCHBASE_CELERY_"
PAIR = ("zh", "en")


def env(name: str, default: str = "") -> str:
    return os.environ.get(ENV + name, default)


QUEUE = env("QUEUE", "benchbase-celery")
CELL = env("CELL", "benchbase-celery")

app = Celery(
    "lingua_bench_peer",
    broker=env("BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=env("BACKEND", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=300,
    # every key the backend writes carries the run's prefix, so cleanup is exact
    result_backend_transport_options={"global_keyprefix": f"{QUEUE}:"},
    worker_prefetch_multiplier=1,
    worker_send_task_events=False,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


class _Scripts:
    """The scripts on a synchronous client; one per process (prefork children too)."""

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(env("REDIS", "redis://127.0.0.1:6379/0"))
        bind(self.redis, find_lua_dir(env("LUA_DIR") or None))
        self.keys = Keys(CELL)


_scripts: _Scripts | None = None


def scripts() -> _Scripts:
    global _scripts
    if _scripts is None:  # lazily: a prefork child must not share its parent's socket
        _scripts = _Scripts()
    return _scripts


def select_kw(job_id: str, now: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": 1,
        "now_ms": now,
        "lease_ms": 3_000,
        "pair_src": PAIR[0],
        "pair_tgt": PAIR[1],
        "services": ["asr", "semantic"],
        "policy": "pack",
        "candidates": 8,
        "wait_until_ms": 0,
        "retry_ms": 100,
    }


@app.task(name="lingua_bench.decide")
def decide(job_id: str) -> dict[str, Any]:
    """Select a node for the job (reserving its slot), then release the slot again."""
    s = scripts()
    now = int(time.time() * 1000)
    sel = run_sync(select_node, s.redis, keys=s.keys, **select_kw(job_id, now))
    if sel.code == ScriptCode.RESERVED:
        run_sync(
            job_release,
            s.redis,
            keys=s.keys,
            job_id=job_id,
            attempt=1,
            reason="bench",
            now_ms=now,
            max_attempts=9,
        )
    return {"code": int(sel.code), "node_id": sel.node_id}


def create_jobs(ids: list[str]) -> None:
    s = scripts()
    now = int(time.time() * 1000)
    for i, job_id in enumerate(ids):
        run_sync(
            job_create,
            s.redis,
            keys=s.keys,
            request_key=f"bench:{job_id}",
            job_id=job_id,
            now_ms=now,
            ttl_ms=600_000,
            fields={"session_id": f"cs-{job_id}", "utterance_index": i},
            audio="",
        )


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a prefork worker's pool processes)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class CpuWatch:
    """CPU seconds of the worker (its process tree), this client, RabbitMQ and Redis."""

    def __init__(self, worker_pid: int | None) -> None:
        from lingua_bench.procstat import find_pids

        info = scripts().redis.info("server")
        self.pids = {
            "worker": process_tree(worker_pid) if worker_pid else [],
            "rabbitmq": find_pids("beam.smp"),
            "redis": [int(info["process_id"])] if info.get("process_id") else [],
        }

    def read(self) -> dict[str, float]:
        from lingua_bench.procstat import cpu_seconds

        out = {"client": time.process_time()}
        for name, pids in self.pids.items():
            out[name] = sum(v for v in map(cpu_seconds, pids) if v is not None)
        return out


def client(n: int, warmup: int, tag: str, worker_pid: int | None = None) -> dict[str, Any]:
    from lingua_bench._base_common import Latency

    ids = [f"{tag}-{i}" for i in range(n + warmup)]
    create_jobs(ids)
    lat = Latency()
    watch = CpuWatch(worker_pid)
    cpu0: dict[str, float] = {}
    for i, job_id in enumerate(ids):
        if i == warmup:
            cpu0 = watch.read()
        t = time.perf_counter_ns()
        out = decide.apply_async((job_id,)).get(timeout=30)
        elapsed = time.perf_counter_ns() - t
        if out["code"] != ScriptCode.RESERVED:
            raise RuntimeError(f"select_node found no node for {job_id}: {out}")
        if i >= warmup:
            lat.record_ns(elapsed)
    cpu1 = watch.read()
    per_task = {k: round((cpu1[k] - cpu0[k]) * 1000 / max(n, 1), 3) for k in cpu1}
    return {
        "p50_ms": lat.ms(50),
        "p99_ms": lat.ms(99),
        "max_ms": lat.ms(100),
        "n": lat.count,
        # worker + client + broker over the timed tasks; Redis (result backend and the
        # script) beside it, not in the sum
        "cpu_ms_per_task": round(per_task["worker"] + per_task["client"] + per_task["rabbitmq"], 3),
        "cpu_ms_per_task_by_process": per_task,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("client",))
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--tag", required=True)
    ap.add_argument(
        "--worker-pid", type=int, help="the worker whose CPU (with its children) counts"
    )
    args = ap.parse_args()
    print(json.dumps(client(args.n, args.warmup, args.tag, args.worker_pid)), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
