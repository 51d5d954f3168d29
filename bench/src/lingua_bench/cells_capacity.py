"""Cells spread the Redis load: the same scripts on one Redis and on a Redis Cluster, in one run.

Every key of a cell is in one slot, so one cell is one Redis core: its selections and its
heartbeats take turns on that server's single thread. This bench drives the Redis side of
scheduling (no services: the scripts as the services send them, pipelined) with the same
driver processes against three layouts, started here as real ``redis-server`` processes on
free loopback ports:

- ``single_1cell``: one Redis, one cell (today's deployment);
- ``single_3cells``: one Redis, three cells (cells alone do not add a core);
- ``cluster_3cells``: a cluster of three masters (no replicas), three cells, each on its own
  master (cell names picked so that their slots fall on different masters).

Each cell holds 256 nodes in one pool shard of the pair zh -> en, every node running one job
of its four slots. Two phases per layout, each ``--seconds`` long:

- ``select``: a job's Redis work on the dispatch path, ``job_create`` + ``select_node``, then
  ``job_release`` (the slot given back, so every round sees the same pools), 64 jobs per
  round trip; the figure is jobs per second;
- ``heartbeat``: ``heartbeat_batch`` calls of 128 beats (node-manager's shape); the figure is
  beats per second.

For each phase: the rate, the CPU seconds per second of each Redis process (``INFO cpu``,
user + sys) and the CPU microseconds per job or beat. The drivers are Python processes on the
same machine, so on a small box they compete with the Redis servers for cores: the figures
say how the load spreads over the masters (each master's CPU) as much as how far it goes.

    python -m lingua_bench.cells_capacity [--seconds 8] [--drivers 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis

from lingua_bench._base_common import log
from lingua_bench.select_redis import Cell, cpu_model, select_kw
from lingua_shared.devcluster import LocalCluster
from lingua_shared.devstack import free_port, port_answers
from lingua_shared.keys import Keys
from lingua_shared.scripts import (
    find_lua_dir,
    heartbeat_batch,
    job_create,
    job_release,
    load_source,
    select_node,
)
from lingua_shared.scripts.heartbeat_batch import beat_args

NODES = 256
JOBS_PER_TRIP = 64
BEATS_PER_CALL = 128
POLICY = "pack"


def _now() -> int:
    return int(time.time() * 1000)


def cells_on_distinct_masters(cluster: LocalCluster, count: int) -> list[str]:
    """``count`` cell names whose slots are on ``count`` different masters."""
    chosen: dict[int, str] = {}
    for i in range(1000):
        name = f"cap{i}"
        port = cluster.master_of(Keys(name).prefix).port
        chosen.setdefault(port, name)
        if len(chosen) == count:
            return sorted(chosen.values())
    raise RuntimeError("no cell names found on distinct masters")


def _drive(phase: str, port: int, cell: str, seconds: float, tag: str, ready: Any, go: Any,
           q: Any) -> None:  # fmt: skip
    """One driver process: ``phase`` on ``cell`` at ``port`` for ``seconds`` from ``go``;
    puts its count. Every call's arguments are built before the clock starts (the same job
    ids each round: a round gives its slots back and deletes its jobs), so the driver spends
    its time sending, not building."""
    r = Redis(port=port)
    lua = find_lua_dir()
    c = Cell(r, lua, cell)
    now = _now()
    rounds: list[list[tuple[Any, ...]]] = []
    if phase == "select":
        jobs = [f"{tag}-{i}" for i in range(JOBS_PER_TRIP)]
        first, second = [], []
        for job in jobs:
            for module, kw in (
                (job_create, {"request_key": f"{job}:0", "job_id": job, "now_ms": now,
                              "ttl_ms": 600_000, "audio": "",
                              "fields": {"session_id": f"s-{job}", "utterance_index": 0}}),
                (select_node, select_kw(job, POLICY, now)),
            ):  # fmt: skip
                keys, args = module.args(c.k, **kw)
                first.append(("EVALSHA", c.sha[module.NAME], len(keys), *keys, *args))
            keys, args = job_release.args(c.k, job_id=job, attempt=1, reason="refused",
                                          now_ms=now + 1, max_attempts=9)  # fmt: skip
            second.append(("EVALSHA", c.sha["job_release"], len(keys), *keys, *args))
            second.append(("DEL", c.k.job(job), c.k.job_audio(job), c.k.idem(f"{job}:0")))
            second.append(("ZREM", c.k.timers, job))
        rounds = [first, second]
        per_round = len(jobs)
    else:
        sha = r.script_load(load_source(lua, "heartbeat_batch"))
        nodes = [f"bn-{i:06d}" for i in range(NODES)]
        calls = []
        for i in range(0, NODES, BEATS_PER_CALL):
            keys, args = heartbeat_batch.args(
                c.k, gateway_id="bench-gw", now_ms=now, max_shard_size=256,
                beats=[beat_args(node_id=b, conn_id=f"c-{b}", running_jobs=1)
                       for b in nodes[i : i + BEATS_PER_CALL]],
            )  # fmt: skip
            calls.append(("EVALSHA", sha, len(keys), *keys, *args))
        rounds = [calls]
        per_round = NODES
    ready.put(1)
    go.wait()
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for trip in rounds:
            pipe = r.pipeline(transaction=False)
            for command in trip:
                pipe.execute_command(*command)
            for reply in pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception):
                    raise reply
        done += per_round
    q.put(done)
    r.close()


def _cpu(port: int) -> float:
    info = Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_layout(
    name: str, targets: list[tuple[int, str]], servers: list[int], seconds: float, drivers: int
) -> dict[str, Any]:
    """``targets``: (port, cell) of each cell; drivers are spread over them round-robin."""
    now = _now()
    for port, cell in targets:
        c = Cell(Redis(port=port), find_lua_dir(), cell)
        c.wipe()
        c.build(NODES, now)
    out: dict[str, Any] = {"cells": len(targets), "servers": len(servers)}
    ctx = mp.get_context("spawn")
    for phase in ("select", "heartbeat"):
        q, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(
                target=_drive,
                args=(
                    phase,
                    *targets[i % len(targets)],
                    seconds,
                    f"{name}-{phase}-{i}",
                    ready,
                    go,
                    q,
                ),
            )
            for i in range(drivers)
        ]
        for p in procs:
            p.start()
        for _ in procs:  # every driver connected and its calls built
            ready.get(timeout=120)
        before = {p: _cpu(p) for p in servers}
        t0 = time.monotonic()
        go.set()
        counts = [q.get(timeout=seconds + 120) for _ in procs]
        for p in procs:
            p.join(30)
        wall = time.monotonic() - t0
        cpu = {p: _cpu(p) - before[p] for p in servers}
        total = sum(counts)
        unit = "jobs" if phase == "select" else "beats"
        out[phase] = {
            f"{unit}_per_s": round(total / wall, 1),
            "redis_cpu_per_s": [round(cpu[p] / wall, 3) for p in servers],
            f"redis_cpu_us_per_{unit[:-1]}": round(sum(cpu.values()) / max(1, total) * 1e6, 1),
        }
        log(f"{name} {phase}: {out[phase]}")
    for port, cell in targets:
        Cell(Redis(port=port), find_lua_dir(), cell).wipe()
    return out


def single_server(base: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    d = base / "single"
    d.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(d), "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not port_answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return proc, port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--drivers", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed (Debian/Ubuntu: apt-get install redis-server)")
    base = Path(tempfile.mkdtemp(prefix="lingua-cells-bench-"))
    proc, port = single_server(base)
    cluster = LocalCluster(base / "cluster", masters=3, replicas=0)
    try:
        cluster.start()
        layouts: dict[str, Any] = {}
        layouts["single_1cell"] = run_layout(
            "single_1cell", [(port, "cap-a")], [port], a.seconds, a.drivers
        )
        layouts["single_3cells"] = run_layout(
            "single_3cells",
            [(port, c) for c in ("cap-a", "cap-b", "cap-c")],
            [port],
            a.seconds,
            a.drivers,
        )
        cells = cells_on_distinct_masters(cluster, 3)
        masters = [cluster.master_of(Keys(c).prefix).port for c in cells]
        layouts["cluster_3cells"] = run_layout(
            "cluster_3cells", list(zip(masters, cells, strict=True)), masters, a.seconds, a.drivers
        )
    finally:
        cluster.stop()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    one, spread = layouts["single_1cell"], layouts["cluster_3cells"]
    result = {
        "meta": {
            "utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpu": cpu_model(),
            "cores": mp.cpu_count(),
            "seconds": a.seconds,
            "drivers": a.drivers,
            "nodes_per_cell": NODES,
            "method": "pipelined script calls from driver processes; Redis CPU from INFO cpu",
        },
        "layouts": layouts,
        "ratio_cluster_to_single": {
            "select": round(spread["select"]["jobs_per_s"] / one["select"]["jobs_per_s"], 2),
            "heartbeat": round(
                spread["heartbeat"]["beats_per_s"] / one["heartbeat"]["beats_per_s"], 2
            ),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
