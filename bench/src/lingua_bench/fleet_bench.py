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
plus the registered nodes whose record is gone at the end. *Loaded* = the hog ran from
before the first connection to the end of the hold and got at least a quarter of a core
(its share, ``details.fleet.hog.cpu_share``, is reported: the services compete with it).

The nodes run in a child process (``python -m lingua_bench.fleet_bench``), as the load
generator does, so their CPU is never the services'. 20,000 sockets need more file
descriptors than a default limit allows: the scenario raises ``RLIMIT_NOFILE`` for itself and
the processes it starts, and fails with the ``ulimit -n`` it needs when it may not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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


def raise_fd_limit(nodes: int) -> None:
    """Enough descriptors for ``nodes`` sockets in the generator and in the gateway."""
    need = nodes + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need or soft == resource.RLIM_INFINITY:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, OSError) as exc:
        raise RuntimeError(
            f"{nodes} nodes need `ulimit -n {need}` (now {soft}, hard {hard}): {exc}"
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
    """The scenario: a fresh stack, the hog, the fleet in a child process; the figures.
    ``size`` overrides ``FULL`` / ``QUICK`` (a smaller fleet while developing)."""
    from lingua_bench.scenarios import with_stack  # the scenarios' stack helper

    size = size or (QUICK if quick else FULL)
    raise_fd_limit(size.nodes)
    out = work / "fleet.json"

    def go(stack: Any) -> dict[str, Any]:
        watch = [f"--watch={name}={pid}" for name, pids in stack.pids().items() for pid in pids]
        budget = size.nodes / size.register_per_s + size.ack_wait_s + size.hold_s + 120
        hog = CpuHog()
        try:
            cmd = [
                sys.executable,
                "-m",
                "lingua_bench.fleet_bench",
                f"--gateway={stack.gateway_ws}",
                f"--redis-url={stack.redis_url}",
                f"--cell={stack.cell}",
                f"--out={out}",
                f"--size={json.dumps(asdict(size))}",
                *watch,
                *([] if progress else ["--no-progress"]),
            ]
            proc = subprocess.run(cmd, timeout=min(budget, max(timeout_s, 60)), check=False)
        finally:
            hog_report = hog.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"fleet generator exited with {proc.returncode}")
        report = json.loads(out.read_text())
        nm = metrics_of(stack.procs["node-manager"].base_url)
        gw = metrics_of(stack.procs["gateway"].base_url)
        report["hog"] = hog_report
        report["node_manager"] = {
            "swept": nm.get("lingua_nodes_swept_total", 0.0),
            "reregister_requests": nm.get("lingua_reregister_requests_total", 0.0),
            "beats_of_unknown_nodes": nm.get(
                'lingua_heartbeats_applied_total{outcome="not_registered"}', 0.0
            ),
        }
        report["gateway"] = {
            "reregistrations": gw.get("lingua_gateway_reregistrations_total", 0.0),
            "registrations_slow": gw.get("lingua_gateway_registrations_slow_total", 0.0),
            "register_publish_failures": gw.get(
                'lingua_gateway_publish_failures_total{kind="node_register"}', 0.0
            ),
            "heartbeat_batch_publish_failures": gw.get(
                'lingua_gateway_publish_failures_total{kind="heartbeat_batch"}', 0.0
            ),
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


# -- the child process: the fleet itself ------------------------------------------------------
class FleetGen:
    def __init__(self, args: argparse.Namespace, size: FleetSize) -> None:
        self.args = args
        self.size = size
        self.fleet = Fleet(
            FleetSpec(
                count=size.nodes,
                gateway_url=f"{args.gateway.rstrip('/')}/ws/node",
                heartbeat_ms=size.heartbeat_ms,
                id_prefix="lf",
                profile="lingua",
            ),
            on_assign=lambda *_: None,
            answer=False,
        )
        self.failed: dict[str, str] = {}
        self.ack_s: list[float] = []

    async def register(self, node: BenchNode) -> None:
        """Connect and register one node, waiting ``ack_wait_s`` for its ack."""
        t = time.monotonic()
        try:
            ws = await connect(
                self.fleet.spec.gateway_url,
                compression=None,
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
        except TimeoutError:
            self.failed[node.node_id] = f"no ack within {self.size.ack_wait_s:g} s"
        except (OSError, WebSocketException, RuntimeError) as exc:
            self.failed[node.node_id] = repr(exc)[:200]

    async def run(self) -> dict[str, Any]:
        size = self.size
        cpu = CpuMeter({**parse_watch(self.args.watch), "generator": [os.getpid()]})
        beats = asyncio.create_task(self.fleet.beat_forever())
        cpu.start()
        t0 = time.monotonic()
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
        finally:
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            cpu_s = cpu.stop()
            await self.fleet.close()
        acks = sorted(self.ack_s)
        pct = lambda q: round(acks[min(len(acks) - 1, int(q * len(acks)))], 3) if acks else None  # noqa: E731
        return {
            "nodes": size.nodes,
            "registered": len(self.ack_s),
            "failures": len(self.failed),
            "failed_sample": dict(list(self.failed.items())[:5]),
            "node_errors": self.fleet.errors,
            "registration_s": round(reg_s, 1),
            "ack_wait_s": {"p50": pct(0.5), "p99": pct(0.99), "max": acks[-1] if acks else None},
            "hold_s": size.hold_s,
            "beats_sent": self.fleet.beats_sent,
            "disconnects_during_hold": self.fleet.disconnects - disc0,
            "records_missing_at_end": len(missing),
            "generator_max_backlog_ms": round(self.fleet.max_backlog_ms, 1),
            "cpu_s": cpu_s,
        }

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lingua_bench.fleet_bench")
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--cell", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", required=True, help="FleetSize as JSON")
    ap.add_argument("--watch", action="append", default=[])
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    require_loopback(args.gateway)
    require_loopback(args.redis_url)
    size = FleetSize(**json.loads(args.size))
    from lingua_shared.runtime import install_uvloop

    install_uvloop()
    gen = FleetGen(args, size)
    report = asyncio.run(gen.run())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_progress:
        print(
            f"fleet: {report['registered']}/{size.nodes} registered, {report['failures']} failed,"
            f" {report['records_missing_at_end']} missing at the end",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
