"""The scenarios of ``python -m lingua_bench``: what each starts, runs and returns.

Job-path and heartbeat scenarios start the services as real processes (:mod:`.stack`) and
drive them with the load generator as a separate process (``python -m lingua_bench.loadgen``),
so the generator's CPU is never the services' CPU. The floor, the Celery peer, the
``select_node.lua`` micro-benchmark and the stats figures live in their own modules with one
``run()`` each; a module missing from the checkout is reported, not fatal.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lingua_bench.rules import FULL_SEARCH, P99_LIMIT_MS, QUICK_SEARCH
from lingua_bench.stack import BenchStack

SERVICES = ("node-manager", "dispatcher", "gateway")
# Heartbeat fleets connect at this rate: 10,000 nodes in 50 s, the way a real fleet comes up
# over a minute or so (rolling starts, reconnect back-off), not all in the same second.
HB_REGISTER_PER_S = 200.0


class ModuleMissing(RuntimeError):
    """A scenario module (floor, peer_celery, select_bench, stats_bench) is not installed."""


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is: the full run, or ``--quick`` for a smoke test."""

    dispatch_nodes: int
    sessions: int
    low_load_s: float
    at_200_s: float
    step: str  # START:FACTOR:MAX:SECONDS
    hb_counts: tuple[int, ...]  # tried in order while each holds
    hb_fallback: int  # tried when the first count fails
    hb_seconds: float
    peer_n: int


FULL = Sizes(
    dispatch_nodes=10_000,
    sessions=50,
    low_load_s=20.0,
    at_200_s=20.0,
    step=FULL_SEARCH,  # the rate search of floor and dispatch alike (lingua_bench.rules)
    hb_counts=(10_000, 14_000, 18_000),
    hb_fallback=5_000,
    hb_seconds=60.0,
    peer_n=2000,
)
QUICK = Sizes(
    dispatch_nodes=100,
    sessions=4,
    low_load_s=2.0,
    at_200_s=2.0,
    step=QUICK_SEARCH,
    hb_counts=(200,),
    hb_fallback=50,
    hb_seconds=3.0,
    peer_n=50,
)


def load_module(name: str) -> Any:
    """``lingua_bench.<name>``, or :class:`ModuleMissing` when the checkout lacks it (an
    import error inside the module itself is a real failure and propagates)."""
    full = f"lingua_bench.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name == full:
            raise ModuleMissing(f"{full} is not in this checkout: no figures") from None
        raise


def run_loadgen(
    stack: BenchStack, args: list[str], out: Path, timeout_s: float, progress: bool
) -> dict[str, Any]:
    """Run the load generator against ``stack`` and return its report."""
    watch = [f"--watch={name}={pid}" for name, pids in stack.pids().items() for pid in pids]
    cmd = [
        sys.executable,
        "-m",
        "lingua_bench.loadgen",
        "--gateway",
        stack.gateway_ws,
        "--redis-url",
        stack.redis_url,
        "--cell",
        stack.cell,
        "--p99-limit-ms",
        str(P99_LIMIT_MS),
        "--out",
        str(out),
        *watch,
        *args,
        *([] if progress else ["--no-progress"]),
    ]
    proc = subprocess.run(cmd, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen exited with {proc.returncode}: {' '.join(cmd)}")
    return json.loads(out.read_text())


def with_stack(
    tag: str,
    redis_url: str,
    amqp_url: str,
    work: Path,
    env: dict[str, str],
    fn: Any,
) -> Any:
    stack = BenchStack(redis_url, amqp_url, work / "logs", tag, env)
    try:
        stack.start(*SERVICES)
        return fn(stack)
    finally:
        codes = stack.stop()
        stack.cleanup()
        bad = {n: c for n, c in codes.items() if c not in (0, None)}
        if bad:
            print(f"bench: {tag}: services exited uncleanly: {bad}", file=sys.stderr)


def dispatch(
    sizes: Sizes, redis_url: str, amqp_url: str, work: Path, progress: bool, timeout_s: float
) -> dict[str, Any]:
    """dispatch.* and roundtrip.*: one closed-loop phase (one job in flight: both the dispatch
    and the round-trip latency of each job), one open-loop phase at 200/s, then the rate
    ramp, all with ``dispatch_nodes`` registered nodes answering at once."""

    def go(stack: BenchStack) -> dict[str, Any]:
        return run_loadgen(
            stack,
            [
                f"--nodes={sizes.dispatch_nodes}",
                f"--sessions={sizes.sessions}",
                "--heartbeat-ms=15000",
                f"--phase=low_load=closed:{sizes.low_load_s:g}",
                f"--phase=at_200_per_s=open:200:{sizes.at_200_s:g}",
                f"--phase=step=step:{sizes.step}",
            ],
            work / "loadgen-dispatch.json",
            timeout_s,
            progress,
        )

    return with_stack("dispatch", redis_url, amqp_url, work, {}, go)


def heartbeats(
    sizes: Sizes,
    redis_url: str,
    amqp_url: str,
    work: Path,
    progress: bool,
    deadline: float,
) -> dict[str, Any]:
    """The largest node count (from ``hb_counts``) that holds at 1 Hz for ``hb_seconds``:
    no false expiry and apply-lag p99 <= 1 s. Each count runs on a fresh stack; a count is
    only tried when the time left allows it."""
    attempts: list[dict[str, Any]] = []
    queue = list(sizes.hb_counts)
    fallback_used = False
    best: dict[str, Any] | None = None
    while queue:
        n = queue.pop(0)
        need = sizes.hb_seconds + 30 + n / HB_REGISTER_PER_S  # registration, start, stop
        if time.monotonic() + need > deadline:
            attempts.append({"nodes": n, "skipped": "not enough time left in the budget"})
            break
        summary = _heartbeat_attempt(n, sizes, redis_url, amqp_url, work, progress, need)
        attempts.append(summary)
        if summary["held"]:
            best = summary
            continue
        if best is None and not fallback_used:
            queue, fallback_used = [sizes.hb_fallback], True
            continue
        break
    return {"best": best, "attempts": attempts}


def _heartbeat_attempt(
    n: int,
    sizes: Sizes,
    redis_url: str,
    amqp_url: str,
    work: Path,
    progress: bool,
    need: float,
) -> dict[str, Any]:
    # registrations queue when the gateway is short of CPU (they are paced at 200/s, not
    # promised at it): the generator waits for them four times the paced time, then reports
    # the count as not held (a capacity limit); only a generator that fails, or outlives
    # that wait, the hold and the teardown, has crashed
    register_deadline = 4 * n / HB_REGISTER_PER_S + 30

    def go(stack: BenchStack) -> dict[str, Any]:
        return run_loadgen(
            stack,
            [
                f"--nodes={n}",
                "--sessions=0",
                "--heartbeat-ms=1000",
                f"--register-per-s={HB_REGISTER_PER_S:g}",
                f"--register-deadline-s={register_deadline:g}",
                f"--phase=hb=heartbeats:{sizes.hb_seconds:g}",
            ],
            work / f"loadgen-heartbeats-{n}.json",
            need + register_deadline + 120,
            progress,
        )

    try:
        report = with_stack(f"hb{n}", redis_url, amqp_url, work, {}, go)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"nodes": n, "held": False, "error": str(exc)}
    reg = report["registration"]
    if reg.get("incomplete"):
        got = reg["incomplete"]["registered"]
        return {
            "nodes": n,
            "held": False,
            "reason": f"registration incomplete: {got} of {n} nodes acked within "
            f"{register_deadline:g} s (queued, not refused)",
            "registration": reg,
        }
    ph = report["phases"]["hb"]
    hb = ph["heartbeats"]
    lag = hb["apply_lag_observed"]["summary"]["p99_ms"]
    return {
        "nodes": n,
        "held": hb["false_expiries"] == 0 and lag is not None and lag <= 1000,
        "apply_lag_p99_ms": lag,
        "false_expiries": hb["false_expiries"],
        "cpu_s": ph["cpu_s"],
        "seconds": ph["seconds"],
        "registration": report["registration"],
        "detail": {k: v for k, v in hb.items() if k != "apply_lag_observed"},
        "apply_lag": hb["apply_lag_observed"],
    }


def module_scenario(name: str, **kwargs: Any) -> dict[str, Any]:
    return load_module(name).run(**kwargs)
