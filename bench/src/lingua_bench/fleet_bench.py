"""fleet.*: a lingua fleet registers and stays, with one core taken by a CPU hog.

``FULL``: 20,000 nodes in lingua's profile (its ``node_register``, no ``acks_jobs``, beats
every 15 s, language capabilities in every beat) connect at ``register_per_s`` to a fresh
stack, then beat for ``hold_s``; a ``python -c "while 1: pass"`` process started before the
first connection and stopped after the hold keeps one of the two cores busy throughout.

A lingua agent waits for its ack as long as it takes and retries a closed socket only once,
so a node counts as a *registration failure* when it got an ``error`` or its socket closed
before its ``node_register_ack``, or no ack came within ``ack_wait_s`` (the ack is allowed to
be late: a slow scheduler delays registrations, it must not refuse them). The nodes are
healthy throughout, so every expiry is false: *false expiries* = the nodes node-manager
swept or asked to re-register (the larger of the two counts: one expiry shows up in both),
read from its metrics at the end of the hold, before any node closes (afterwards its
backlog of 20,000 disconnections lets some closed nodes expire first, which is no false
expiry), plus the registered nodes whose record is gone at the end. *Loaded* = the hog ran from
before the first connection to the end of the hold and got at least a quarter of a core
(its share, ``details.fleet.hog.cpu_share``, is reported: the services compete with it).

The nodes run in child processes (``python -m lingua_bench.fleet_bench``), as the load
generator does, so their CPU is never the services'. One process holds one socket per node it
serves, and no process may open more descriptors than its hard limit (20,000 where the
results were taken; only CAP_SYS_RESOURCE raises it), so the fleet is spread as a deployment
spreads it: over ``processes_for(nodes)`` gateway replicas (same cell and bus prefix, each
its own instance id and port) and as many generator processes, one of each per
``NODES_PER_PROCESS`` nodes and at least two, so the quick size runs the same path.
Generator ``j`` holds the nodes ``i`` with ``i % n == j`` and connects them to gateway ``j``:
nodes alternate between the replicas, and the pacing by fleet-wide index keeps the fleet's
rate. The generators build their nodes, say ``ready`` and start together on ``go``. Their
reports are merged (counts summed, ack waits pooled, the longest registration and backlog
kept, the services' CPU from the first, which alone meters them), both gateways' metrics are
summed, and ``details.fleet.gateways`` gives each replica's node connections at the end of
the hold. Where a run lost nodes shows in the details: failures with their reason and time,
each generator's acks and failures per 10 s (``timeline``) and its event-loop lag (a
generator that falls behind cannot answer the gateway's pings, which then closes its
sockets), and each gateway's node closes by close code. Each process raises its soft
``RLIMIT_NOFILE`` to what its share needs; the scenario fails naming the ``ulimit -n`` it
needs when the hard limit is too low even for that.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import select
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from lingua_bench.fleet import BenchNode, Fleet, FleetSpec
from lingua_bench.guard import require_loopback
from lingua_bench.procstat import CpuMeter, cpu_seconds
from lingua_shared.keys import Keys

HOG_CODE = "while 1: pass"
LOADED_MIN_SHARE = 0.25  # of one core, over the registration and the hold: it was not starved


@dataclass(frozen=True)
class FleetSize:
    nodes: int
    register_per_s: float
    hold_s: float
    ack_wait_s: float
    heartbeat_ms: int = 15_000


FULL = FleetSize(nodes=20_000, register_per_s=250.0, hold_s=60.0, ack_wait_s=120.0)
QUICK = FleetSize(nodes=200, register_per_s=200.0, hold_s=3.0, ack_wait_s=30.0)


NODES_PER_PROCESS = 10_000  # sockets per gateway replica and per generator process
FD_HEADROOM = 4096  # a process's other descriptors: Redis, RabbitMQ, logs, Python itself


def processes_for(nodes: int, hard: int | None = None) -> int:
    """Gateway replicas (and generator processes) for ``nodes``: one per ``NODES_PER_PROCESS``
    nodes, fewer nodes each when the hard open-file limit leaves less room, at least two."""
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    if hard is None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per = NODES_PER_PROCESS
    if hard != resource.RLIM_INFINITY:
        per = min(per, hard - FD_HEADROOM)
    if per < 1:
        raise RuntimeError(f"the hard open-file limit {hard} leaves no room for sockets")
    return max(2, math.ceil(nodes / per))


def raise_fd_limit(sockets: int) -> None:
    """Enough descriptors for ``sockets`` sockets in this process and those it starts."""
    need = sockets + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need or soft == resource.RLIM_INFINITY:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, OSError) as exc:
        raise RuntimeError(
            f"{sockets} sockets per process need `ulimit -n {need}` (now {soft}, hard {hard}):"
            f" {exc}"
        ) from None


class CpuHog:
    """One process spinning on a core, beside the stack."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOG_CODE])
        self.t0 = time.monotonic()
        self.cpu0 = cpu_seconds(self.proc.pid) or 0.0

    def stop(self) -> dict[str, Any]:
        """Stop it; what it ran (``alive_at_end``, ``cpu_share`` of one core)."""
        alive = self.proc.poll() is None
        cpu = cpu_seconds(self.proc.pid)
        seconds = time.monotonic() - self.t0
        self.proc.kill()
        self.proc.wait(5)
        share = (cpu - self.cpu0) / seconds if cpu is not None and seconds > 0 else 0.0
        return {
            "alive_at_end": alive,
            "seconds": round(seconds, 1),
            "cpu_share": round(share, 2),
            "loaded": alive and share >= LOADED_MIN_SHARE,
        }


NM_COUNTS = {
    "swept": "lingua_nodes_swept_total",
    "reregister_requests": "lingua_reregister_requests_total",
    "beats_of_unknown_nodes": 'lingua_heartbeats_applied_total{outcome="not_registered"}',
}


def node_manager_counts(metrics: dict[str, float]) -> dict[str, float]:
    return {name: metrics.get(metric, 0.0) for name, metric in NM_COUNTS.items()}


def metrics_of(base_url: str) -> dict[str, float]:
    """A service's /metrics as {sample line name with labels: value}."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def run(
    quick: bool,
    redis_url: str,
    amqp_url: str,
    work: Path,
    progress: bool,
    timeout_s: float,
    size: FleetSize | None = None,
) -> dict[str, Any]:
    """The scenario: a fresh stack with its gateway replicas, the hog, the fleet in generator
    processes; the figures. ``size`` overrides ``FULL`` / ``QUICK`` (a smaller fleet while
    developing)."""
    from lingua_bench.scenarios import with_stack  # the scenarios' stack helper

    size = size or (QUICK if quick else FULL)
    count = processes_for(size.nodes)
    raise_fd_limit(math.ceil(size.nodes / count))

    def go(stack: Any) -> dict[str, Any]:
        gateways = stack.add_replicas("gateway", count)
        watch = [f"--watch={name}={pid}" for name, pids in stack.pids().items() for pid in pids]
        budget = size.nodes / size.register_per_s + size.ack_wait_s + size.hold_s + 120
        hog = CpuHog()
        try:
            reports = run_generators(
                stack, size, count, work, watch, progress, min(budget, max(timeout_s, 60))
            )
        finally:
            hog_report = hog.stop()
        report = merge_reports(reports)
        report["hog"] = hog_report
        readings = [r.get("node_manager_at_end") for r in reports]
        if all(readings):
            # the earliest reading, taken before any node of the fleet closed
            report["node_manager"] = {k: min(float(r[k]) for r in readings if r) for k in NM_COUNTS}
            report["node_manager"]["read"] = "end of the hold"
        else:
            after = node_manager_counts(metrics_of(stack.procs["node-manager"].base_url))
            report["node_manager"] = {**after, "read": "after the nodes closed"}
        at_end = {}
        for r in reports:
            at_end.update(r["gateway_nodes_at_end"])
        per_gateway = []
        for p in gateways:
            gw = metrics_of(p.base_url)
            per_gateway.append(
                {
                    "name": p.name,
                    "nodes_at_end_of_hold": at_end.get(f"ws://127.0.0.1:{p.port}"),
                    "node_registers_received": gw.get(
                        'lingua_gateway_messages_in_total{endpoint="node",type="node_register"}',
                        0.0,
                    ),
                    "reregistrations": gw.get("lingua_gateway_reregistrations_total", 0.0),
                    "registrations_slow": gw.get("lingua_gateway_registrations_slow_total", 0.0),
                    "register_publish_failures": gw.get(
                        'lingua_gateway_publish_failures_total{kind="node_register"}', 0.0
                    ),
                    "heartbeat_batch_publish_failures": gw.get(
                        'lingua_gateway_publish_failures_total{kind="heartbeat_batch"}', 0.0
                    ),
                    "node_closes": {
                        k.partition("{")[2].rstrip("}").replace('endpoint="node",', ""): v
                        for k, v in gw.items()
                        if k.startswith("lingua_gateway_closes_total{") and 'endpoint="node"' in k
                    },
                }
            )
        report["gateways"] = per_gateway
        report["gateway"] = {
            k: sum(g[k] for g in per_gateway)
            for k in (
                "reregistrations",
                "registrations_slow",
                "register_publish_failures",
                "heartbeat_batch_publish_failures",
            )
        }
        return report

    r = with_stack("fleet", redis_url, amqp_url, work, {}, go)
    nm = r["node_manager"]
    expired = int(max(nm["swept"], nm["reregister_requests"])) + r["records_missing_at_end"]
    return {
        "lingua_nodes": r["registered"],
        "lingua_registration_failures": r["failures"],
        "false_expiries": expired,
        "loaded": r["hog"]["loaded"],
        "details": {"size": asdict(size), **r},
    }


def run_generators(
    stack: Any,
    size: FleetSize,
    count: int,
    work: Path,
    watch: list[str],
    progress: bool,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """``count`` generator processes, generator ``j`` holding the nodes ``i % count == j``
    (on gateway ``j``); started together once every one has built its nodes. Their reports,
    in order. Only the first meters the services' CPU (``watch``)."""
    deadline = time.monotonic() + timeout_s
    gateways = stack.gateway_wss
    outs = [work / f"fleet-{j}.json" for j in range(count)]
    procs: list[subprocess.Popen[str]] = []
    try:
        for j in range(count):
            cmd = [
                sys.executable,
                "-m",
                "lingua_bench.fleet_bench",
                *(f"--gateway={g}" for g in gateways),
                f"--redis-url={stack.redis_url}",
                f"--cell={stack.cell}",
                f"--out={outs[j]}",
                f"--size={json.dumps(asdict(size))}",
                f"--shard={j}/{count}",
                f"--node-manager={stack.procs['node-manager'].base_url}",
                "--wait-go",
                *(watch if j == 0 else []),
                *([] if progress else ["--no-progress"]),
            ]
            procs.append(
                subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        for j, proc in enumerate(procs):
            wait_for_line(proc, "ready", deadline, f"fleet generator {j}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
        for j, proc in enumerate(procs):
            left = deadline - time.monotonic()
            try:
                code = proc.wait(max(1.0, left))
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"fleet generator {j} still running after {timeout_s:.0f} s"
                ) from None
            if code != 0:
                raise RuntimeError(f"fleet generator {j} exited with {code}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    return [json.loads(o.read_text()) for o in outs]


def wait_for_line(proc: subprocess.Popen[str], want: str, deadline: float, what: str) -> None:
    """Read ``proc``'s stdout until the line ``want``; fail when it exits or time is up."""
    assert proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what}: no {want!r} in time")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{what} exited with {proc.wait(5)} before {want!r}")
        if line.strip() == want:
            return


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The generators' reports as one fleet's: counts summed, ack waits pooled, the longest
    registration and backlog kept; CPU: the services' from the first report (the only one that
    meters them) and every generator's own, summed as ``generator``."""
    acks = sorted(a for r in reports for a in r.pop("ack_s"))
    errors: dict[str, int] = {}
    failed: dict[str, str] = {}
    for r in reports:
        for code, n in r["node_errors"].items():
            errors[code] = errors.get(code, 0) + n
        failed.update(r["failed_sample"])
    cpu = dict(reports[0]["cpu_s"])
    cpu["generator"] = round(sum(r["cpu_s"].get("generator", 0.0) for r in reports), 2)

    def total(key: str) -> int:
        return sum(r[key] for r in reports)

    return {
        "nodes": total("nodes"),
        "registered": total("registered"),
        "failures": total("failures"),
        "failed_sample": dict(list(failed.items())[:5]),
        "node_errors": errors,
        "registration_s": max(r["registration_s"] for r in reports),
        "ack_wait_s": ack_percentiles(acks),
        "hold_s": reports[0]["hold_s"],
        "beats_sent": total("beats_sent"),
        "disconnects_during_hold": total("disconnects_during_hold"),
        "records_missing_at_end": total("records_missing_at_end"),
        "generator_max_backlog_ms": max(r["generator_max_backlog_ms"] for r in reports),
        "generator_max_loop_lag_ms": max(r.get("generator_max_loop_lag_ms", 0.0) for r in reports),
        "cpu_s": cpu,
        "generators": [
            {k: r[k] for k in ("shard", "nodes", "registered", "failures", "registration_s")}
            | {"cpu_s": r["cpu_s"].get("generator"), "timeline": r.get("timeline", {})}
            for r in reports
        ],
    }


def ack_percentiles(acks: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of sorted ack waits."""
    if not acks:
        return {"p50": None, "p99": None, "max": None}
    pct = lambda q: round(acks[min(len(acks) - 1, int(q * len(acks)))], 3)  # noqa: E731
    return {"p50": pct(0.5), "p99": pct(0.99), "max": round(acks[-1], 3)}


# -- the child process: the fleet itself ------------------------------------------------------
class FleetGen:
    """One generator: its shard of the fleet, registered then held."""

    def __init__(self, args: argparse.Namespace, size: FleetSize) -> None:
        self.args = args
        self.size = size
        shard, shards = args.shard
        self.gateways = [g.rstrip("/") for g in args.gateway]
        self.fleet = Fleet(
            FleetSpec(
                count=size.nodes,
                gateway_url=f"{self.gateways[0]}/ws/node",
                heartbeat_ms=size.heartbeat_ms,
                id_prefix="lf",
                profile="lingua",
                shards=shards,
                shard=shard,
                gateway_urls=[f"{g}/ws/node" for g in self.gateways],
            ),
            on_assign=lambda *_: None,
            answer=False,
        )
        self.failed: dict[str, str] = {}
        self.ack_s: list[float] = []
        self.t0 = 0.0
        # seconds since the start -> (acks, failures) per 10 s, and how late the loop woke up
        self.timeline: dict[int, list[int]] = {}
        self.max_loop_lag_s = 0.0

    def note(self, ok: bool) -> None:
        slot = self.timeline.setdefault(int((time.monotonic() - self.t0) // 10) * 10, [0, 0])
        slot[0 if ok else 1] += 1

    async def watch_loop(self) -> None:
        """How late a 0.1 s sleep wakes: the generator's own event-loop lag. Every second
        it also freezes what survived (``gc.freeze``): thousands of sockets' objects live to
        the end, and a full collection walking them all would hold the loop for seconds on a
        busy machine, long enough for the gateway to close the sockets whose pings waited."""
        last_freeze = time.monotonic()
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.1)
            now = time.monotonic()
            self.max_loop_lag_s = max(self.max_loop_lag_s, now - t - 0.1)
            if now - last_freeze >= 1.0:
                gc.freeze()
                last_freeze = now

    async def register(self, node: BenchNode) -> None:
        """Connect and register one node, waiting ``ack_wait_s`` for its ack."""
        t = time.monotonic()
        try:
            ws = await connect(
                self.fleet.spec.url_of(node.index),
                compression=None,
                proxy=None,  # loopback: no proxy lookup in the environment per connect
                ping_interval=None,
                max_size=2**22,
                open_timeout=self.size.ack_wait_s,
                close_timeout=2,
            )
            node.ws = ws
            node.registered = asyncio.get_running_loop().create_future()
            self.fleet.tasks.append(asyncio.create_task(self.fleet._receive(node, ws)))
            await ws.send(node.register_frame)
            left = self.size.ack_wait_s - (time.monotonic() - t)
            await asyncio.wait_for(asyncio.shield(node.registered), max(1.0, left))
            self.ack_s.append(time.monotonic() - t)
            self.note(True)
        except TimeoutError:
            self.failed[node.node_id] = f"no ack within {self.size.ack_wait_s:g} s"
            self.note(False)
        except (OSError, WebSocketException, RuntimeError) as exc:
            self.failed[node.node_id] = f"{repr(exc)[:160]} after {time.monotonic() - t:.1f} s"
            self.note(False)

    async def run(self) -> dict[str, Any]:
        size = self.size
        cpu = CpuMeter({**parse_watch(self.args.watch), "generator": [os.getpid()]})
        beats = asyncio.create_task(self.fleet.beat_forever())
        lag = asyncio.create_task(self.watch_loop())
        cpu.start()
        t0 = self.t0 = time.monotonic()
        try:

            async def paced(node: BenchNode) -> None:
                await asyncio.sleep(
                    max(0.0, t0 + node.index / size.register_per_s - time.monotonic())
                )
                await self.register(node)

            await asyncio.gather(*(paced(n) for n in self.fleet.nodes))
            reg_s = time.monotonic() - t0
            disc0 = self.fleet.disconnects
            await asyncio.sleep(size.hold_s)
            missing = await self.missing_records()
            at_end = self.gateway_nodes()
            nm_at_end = self.node_manager_counts()
        finally:
            beats.cancel()
            lag.cancel()
            await asyncio.gather(beats, lag, return_exceptions=True)
            cpu_s = cpu.stop()
            await self.fleet.close()
        return {
            "shard": self.fleet.spec.shard,
            "nodes": len(self.fleet.nodes),
            "registered": len(self.ack_s),
            "failures": len(self.failed),
            "failed_sample": dict(list(self.failed.items())[:5]),
            "node_errors": self.fleet.errors,
            "registration_s": round(reg_s, 1),
            "ack_s": [round(a, 3) for a in self.ack_s],
            "hold_s": size.hold_s,
            "beats_sent": self.fleet.beats_sent,
            "disconnects_during_hold": self.fleet.disconnects - disc0,
            "records_missing_at_end": len(missing),
            "generator_max_backlog_ms": round(self.fleet.max_backlog_ms, 1),
            "generator_max_loop_lag_ms": round(self.max_loop_lag_s * 1000, 1),
            "timeline": {str(k): v for k, v in sorted(self.timeline.items())},
            "gateway_nodes_at_end": at_end,
            "node_manager_at_end": nm_at_end,
            "cpu_s": cpu_s,
        }

    def node_manager_counts(self) -> dict[str, float] | None:
        """Node-manager's expiry counts at the end of this generator's hold, before its nodes
        close (after, the backlog of thousands of disconnections lets some nodes that stopped
        beating expire first: those are not false expiries). None without ``--node-manager``
        or when it did not answer."""
        if not self.args.node_manager:
            return None
        try:
            return node_manager_counts(metrics_of(self.args.node_manager))
        except OSError:
            return None

    def gateway_nodes(self) -> dict[str, float | None]:
        """Node connections open on each gateway this generator's nodes use, read while they
        are all still connected ({ws base URL: count}; None when /metrics did not answer)."""
        used = {self.fleet.spec.url_of(n.index) for n in self.fleet.nodes}
        out: dict[str, float | None] = {}
        for g in self.gateways:
            if f"{g}/ws/node" not in used:
                continue
            try:
                m = metrics_of("http" + g.removeprefix("ws"))
                out[g] = m.get('lingua_gateway_connections{endpoint="node"}', 0.0)
            except OSError:
                out[g] = None
        return out

    async def missing_records(self) -> set[str]:
        """Registered nodes whose record is gone from Redis."""
        redis = Redis.from_url(self.args.redis_url)
        keys = Keys(self.args.cell)
        ids = [n.node_id for n in self.fleet.nodes if n.node_id not in self.failed]
        missing: set[str] = set()
        try:
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                async with redis.pipeline(transaction=False) as pipe:
                    for node_id in chunk:
                        pipe.exists(keys.node(node_id))
                    found = await pipe.execute()
                missing |= {nid for nid, ok in zip(chunk, found, strict=True) if not ok}
        finally:
            await redis.aclose()
        return missing


def parse_watch(items: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for item in items:
        name, _, pid = item.partition("=")
        out.setdefault(name, []).append(int(pid))
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``j/n``: this generator is shard ``j`` of ``n``."""
    j, sep, n = text.partition("/")
    try:
        shard, shards = int(j), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants j/n, got {text!r}") from None
    if not sep or shards < 1 or not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"--shard wants j/n with 0 <= j < n, got {text!r}")
    return shard, shards


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lingua_bench.fleet_bench")
    ap.add_argument(
        "--gateway",
        action="append",
        required=True,
        help="a gateway replica (repeat: node i connects to the (i mod count)-th)",
    )
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--cell", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", required=True, help="FleetSize as JSON")
    ap.add_argument("--shard", type=parse_shard, default=(0, 1), help="j/n: nodes i %% n == j")
    ap.add_argument("--watch", action="append", default=[])
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--node-manager", default="", help="node-manager's base URL: its counts at hold end"
    )
    ap.add_argument(
        "--wait-go", action="store_true", help="print 'ready', start on a 'go' line on stdin"
    )
    args = ap.parse_args(argv)
    for g in args.gateway:
        require_loopback(g)
    require_loopback(args.redis_url)
    if args.node_manager:
        require_loopback(args.node_manager)
    size = FleetSize(**json.loads(args.size))
    raise_fd_limit(math.ceil(size.nodes / args.shard[1]))
    from lingua_shared.runtime import install_uvloop

    install_uvloop()
    gen = FleetGen(args, size)
    gc.collect()
    gc.freeze()  # the nodes live to the end: no collection need walk them again
    if args.wait_go:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 2
    report = asyncio.run(gen.run())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_progress:
        print(
            f"fleet {args.shard[0]}/{args.shard[1]}: {report['registered']}/{report['nodes']}"
            f" registered, {report['failures']} failed, {report['records_missing_at_end']}"
            " missing at the end",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
