"""``select_node.lua`` inside Redis: the time one call holds the server, before and after.

The whole cell is one Redis Cluster slot, so the time a script runs blocks every other script
of the cell. This bench measures that time, not a round trip: each ``select_node`` runs while
the slow log records every command (``slowlog-log-slower-than 0``, restored afterwards), and
the figure is the duration Redis logged for that EVALSHA (found by the script's SHA and this
connection's name, so other clients of a shared server do not count).

Pools: 256 nodes in 1 shard, and 10,240 nodes in 40 shards (shards of 256), one pool group of
the pair zh -> en, every node running one job of its four slots (no node idle: the case where
selection used to read every shard). Each sample selects for a fresh job of a fresh session
and gives the slot back afterwards (untimed), so every sample sees the same pools.

``before`` is the script at a git revision (``--before-rev``, default ``HEAD``) with its
``--@include``s resolved from that revision; ``after`` is the working tree's. Both run on the
same pools (built by the working tree's scripts; the older script ignores the pair index).

    python -m lingua_bench.select_redis [--redis-url redis://127.0.0.1:6379/10] [--samples 300]

prints a table (p50 / mean, microseconds) and the before/after ratio, and the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from redis import Redis

from lingua_bench._base_common import emit, log
from lingua_shared.keys import Keys
from lingua_shared.scripts import (
    find_lua_dir,
    job_create,
    job_release,
    load_source,
    register_node_v2,
    select_node,
)
from lingua_shared.scripts import heartbeat_with_pool_assign as heartbeat

CELL = "benchsel"
SHARD = 256
CASES = ((256, 1), (10_240, 40))
POLICIES = ("pack", "spread")
CLIENT_NAME = "lingua-select-bench"
INCLUDE_RE = re.compile(r"^--@include (\w+)\s*$", re.MULTILINE)


def source_at(rev: str, name: str) -> str:
    """``lua/<name>.lua`` at a git revision, its includes from the same revision."""
    root = find_lua_dir().parent

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), "show", f"{rev}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    return INCLUDE_RE.sub(lambda m: show(f"lua/lib/{m.group(1)}.lua"), show(f"lua/{name}.lua"))


class Cell:
    def __init__(self, r: Redis, lua_dir: Path, cell: str = CELL) -> None:
        self.r, self.k = r, Keys(cell)
        self.sha = {
            name: r.script_load(load_source(lua_dir, name))
            for name in ("register_node_v2", "heartbeat_with_pool_assign", "job_create",
                         "job_release", "select_node")
        }  # fmt: skip

    def call(self, module: Any, pipe: Any = None, **kw: Any) -> Any:
        keys, args = module.args(self.k, **kw)
        target = pipe if pipe is not None else self.r
        return target.evalsha(self.sha[module.NAME], len(keys), *keys, *args)

    def wipe(self) -> None:
        pattern = self.k.prefix.replace("{", "\\{").replace("}", "\\}") + "*"
        batch = list(self.r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 1000):
            self.r.unlink(*batch[i : i + 1000])

    def build(self, nodes: int, now: int, start: int = 0) -> None:
        """Nodes ``start`` .. ``nodes - 1``, each running one job of its four slots."""
        ids = [f"bn-{i:06d}" for i in range(start, nodes)]
        for i in range(0, len(ids), 512):
            pipe = self.r.pipeline(transaction=False)
            for n in ids[i : i + 512]:
                self.call(register_node_v2, pipe, node_id=n, now_ms=now, ttl_ms=3_600_000,
                          region="eu", gpu_tier="a100", lang_sets=[["en", "zh"]], capacity=4,
                          services={"asr": ["en", "zh"], "semantic": ["en", "zh"]},
                          gateway_id="bench-gw", conn_id=f"c-{n}")  # fmt: skip
                pipe.hset(self.k.node(n), "running", 1)  # one job of four: nobody idle
                self.call(heartbeat, pipe, node_id=n, conn_id=f"c-{n}", gateway_id="bench-gw",
                          now_ms=now, max_shard_size=SHARD)  # fmt: skip
            pipe.execute()


def select_kw(job_id: str, policy: str, now: int) -> dict[str, Any]:
    return {"job_id": job_id, "attempt": 1, "now_ms": now, "lease_ms": 3_000,
            "pair_src": "zh", "pair_tgt": "en", "services": ["asr", "semantic"],
            "policy": policy, "candidates": 8, "wait_until_ms": 0, "retry_ms": 100,
            "deadline_ms": 30_000, "tenant": ""}  # fmt: skip


def measure(cell: Cell, sha: str, policy: str, samples: int, now: int, tag: str) -> list[int]:
    """Redis-side microseconds of ``samples`` select_node calls of the script ``sha``."""
    r = cell.r
    out: list[int] = []
    for i in range(samples):
        job = f"{tag}-{policy}-{i}"
        cell.call(job_create, request_key=f"{job}:0", job_id=job, now_ms=now, ttl_ms=600_000,
                  fields={"session_id": f"s-{job}", "utterance_index": 0}, audio="")  # fmt: skip
        keys, args = select_node.args(cell.k, **select_kw(job, policy, now))
        last = r.slowlog_get(1)
        since = last[0]["id"] if last else -1
        reply = r.evalsha(sha, len(keys), *keys, *args)
        if reply[0] != 1:
            raise RuntimeError(f"select_node found no node: {reply!r}")
        out.append(logged_us(r, sha, since))
        cell.call(job_release, job_id=job, attempt=1, reason="refused", now_ms=now + 1,
                  max_attempts=9)  # fmt: skip
        cell.r.delete(cell.k.job(job), cell.k.job_audio(job), cell.k.idem(f"{job}:0"))
        cell.r.zrem(cell.k.timers, job)
    return out


def logged_us(r: Redis, sha: str, since: int) -> int:
    """The slow log's duration of this connection's one EVALSHA of ``sha`` logged after entry
    ``since``. Other clients of a shared server log too: read back (in growing chunks) until
    the entries reach ``since``."""
    name = CLIENT_NAME.encode()
    n = 32
    while True:
        entries = r.slowlog_get(n)
        mine = [
            e for e in entries
            if e["id"] > since and e.get("client_name", b"") in (CLIENT_NAME, name)
            and len(e["command"]) > 8 and sha.encode() in e["command"][:60]
        ]  # fmt: skip
        reached = len(entries) < n or min(e["id"] for e in entries) <= since + 1
        if mine or reached or n >= 16384:
            break
        n *= 4
    if len(mine) != 1:
        raise RuntimeError(f"slow log: {len(mine)} entries for one call")
    return int(mine[0]["duration"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--before-rev", default="HEAD")
    ap.add_argument("--out", type=Path, help="also write the figures here (JSON, with meta)")
    a = ap.parse_args()

    r = Redis.from_url(a.redis_url)
    r.client_setname(CLIENT_NAME)
    cell = Cell(r, find_lua_dir())
    shas = {"before": r.script_load(source_at(a.before_rev, "select_node")),
            "after": cell.sha["select_node"]}  # fmt: skip
    old = r.config_get("slowlog-*")
    figures: dict[str, Any] = {}
    try:
        r.config_set("slowlog-log-slower-than", 0)
        r.config_set("slowlog-max-len", 16384)
        for nodes, shards in CASES:
            cell.wipe()
            now = int(time.time() * 1000)
            cell.build(nodes, now)
            got = r.scard(cell.k.pair("zh", "en"))
            if got != shards:
                raise RuntimeError(f"{nodes} nodes made {got} shards, not {shards}")
            log("pools built", nodes=nodes, shards=shards)
            for policy in POLICIES:
                for which in ("before", "after"):
                    us = measure(cell, shas[which], policy, a.samples, now, which)
                    figures[f"{nodes}/{shards}/{policy}/{which}"] = {
                        "p50_us": statistics.median(us),
                        "mean_us": round(statistics.fmean(us), 1),
                        "max_us": max(us),
                        "samples": len(us),
                    }
    finally:
        for key, value in old.items():
            r.config_set(key, value)
        cell.wipe()

    print(f"{'nodes':>7} {'shards':>6} {'policy':>6} {'before p50':>11} {'after p50':>10} "
          f"{'before mean':>12} {'after mean':>11} {'ratio p50':>9}")  # fmt: skip
    for nodes, shards in CASES:
        for policy in POLICIES:
            b = figures[f"{nodes}/{shards}/{policy}/before"]
            f = figures[f"{nodes}/{shards}/{policy}/after"]
            ratio = b["p50_us"] / max(f["p50_us"], 1)
            figures[f"{nodes}/{shards}/{policy}/ratio_p50"] = round(ratio, 2)
            print(f"{nodes:>7} {shards:>6} {policy:>6} {b['p50_us']:>9}us {f['p50_us']:>8}us "
                  f"{b['mean_us']:>10}us {f['mean_us']:>9}us {ratio:>8.2f}x")  # fmt: skip
    emit(figures)
    if a.out:
        meta = {
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpu": cpu_model(),
            "before_rev": a.before_rev,
            "after_rev": subprocess.run(["git", "rev-parse", "--short", "HEAD"], text=True,
                                        capture_output=True).stdout.strip(),
            "samples": a.samples,
            "method": "Redis slow log duration of each EVALSHA (Redis-side time per call)",
        }  # fmt: skip
        a.out.write_text(json.dumps({"meta": meta, "select": figures}, indent=2) + "\n")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
