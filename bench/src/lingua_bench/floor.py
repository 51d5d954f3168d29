"""The floor: the minimal pipeline of our architecture with no logic, so the scheduler's own
figures can be read against what the architecture costs by itself on this machine.

client --ws--> server (gateway's shape) --confirmed publish, topic exchange--> worker
(dispatcher's shape, own process): one EVALSHA on a 1,000-member sorted set --confirmed
publish, direct exchange keyed by the server's id--> server --ws--> client.
The two processes are :mod:`lingua_bench._base_floor_procs`; this module is the client.

Both processes publish coalesced (``Publisher.publish_batched``), as the services do.

``low_load``: one message in flight for ``duration_s``, p50/p99 of client send -> client
receive. ``max_sustained_per_s``: the highest open-loop rate that holds, found by the rate
search of the dispatch scenario with the same steps (``search``, START:FACTOR:MAX:SECONDS)
and the same rules (:mod:`lingua_bench.rules`): latency from each message's *scheduled* send
time, every message answered (one still unanswered after the drain fails its step and adds
the time it waited as a sample), p99 <= 50 ms, a failing rate tried once more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from lingua_bench._base_common import (
    DEFAULT_AMQP_URL,
    DEFAULT_REDIS_URL,
    BenchError,
    Child,
    Latency,
    delete_bus,
    delete_cell,
    emit,
    log,
    python_module,
    run_async,
    unique_prefix,
)
from lingua_bench.phases import parse_phase, search_max_rate
from lingua_bench.rules import (
    DRAIN_S,
    FULL_SEARCH,
    P99_LIMIT_MS,
    SEARCH_SPLITS,
    scheduled_ns,
    step_holds,
)
from lingua_shared.bus import Topology

PROCS = "lingua_bench._base_floor_procs"


@dataclass
class Step:
    rate: float
    lat: Latency = field(default_factory=Latency)
    sent: int = 0
    received: int = 0
    unanswered: int = 0  # still unanswered after the drain: a sample of the time waited


class Client:
    """WebSocket connections to the floor server; every reply is matched to its send."""

    def __init__(self) -> None:
        self.conns: list[ClientConnection] = []
        self.pending: dict[int, tuple[int, Step, asyncio.Future[None] | None]] = {}
        self.ids = itertools.count()
        self.readers: list[asyncio.Task[None]] = []

    async def open(self, url: str, n: int) -> None:
        for _ in range(n):
            ws = await connect(url, compression=None, max_size=1_048_576, open_timeout=10)
            self.conns.append(ws)
            self.readers.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            now = time.perf_counter_ns()
            entry = self.pending.pop(orjson.loads(raw)["id"], None)
            if entry is None:
                continue
            t0, step, fut = entry
            step.received += 1
            step.lat.record_ns(now - t0)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def send(self, ws: ClientConnection, t0_ns: int, step: Step, wait: bool) -> None:
        i = next(self.ids)
        fut = asyncio.get_running_loop().create_future() if wait else None
        self.pending[i] = (t0_ns, step, fut)
        step.sent += 1
        await ws.send(orjson.dumps({"id": i}).decode())
        if fut is not None:
            await asyncio.wait_for(fut, 10)

    def give_up(self, step: Step) -> None:
        """What ``step`` still waits for is unanswered: each adds the time it waited."""
        now = time.perf_counter_ns()
        stale = [i for i, (_, s, _) in self.pending.items() if s is step]
        for i in stale:
            t0, _, _ = self.pending.pop(i)
            step.lat.record_ns(now - t0)
        step.unanswered += len(stale)

    async def close(self) -> None:
        for ws in self.conns:
            with contextlib.suppress(Exception):
                await ws.close()
        for t in self.readers:
            t.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


async def low_load(client: Client, seconds: float, warmup: int = 100) -> Step:
    """One message in flight, back to back."""
    ws = client.conns[0]
    for _ in range(warmup):
        await client.send(ws, time.perf_counter_ns(), Step(0), wait=True)
    step = Step(0)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await client.send(ws, time.perf_counter_ns(), step, wait=True)
    return step


async def open_loop(client: Client, rate: float, seconds: float) -> Step:
    """Send at ``rate`` per second on schedule, whatever comes back, round robin over the
    connections; then wait a little for the last replies."""
    step = Step(rate)
    total = max(1, int(rate * seconds))
    start = time.perf_counter_ns()
    conns = client.conns
    i = 0
    while i < total:
        now = time.perf_counter_ns()
        sends = []
        while i < total and scheduled_ns(start, i, rate) <= now:
            sends.append(
                client.send(conns[i % len(conns)], scheduled_ns(start, i, rate), step, False)
            )
            i += 1
        if sends:
            await asyncio.gather(*sends)
        await asyncio.sleep(max(0.0, (scheduled_ns(start, i, rate) - time.perf_counter_ns()) / 1e9))
    deadline = time.perf_counter() + DRAIN_S
    while step.received < step.sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    client.give_up(step)
    return step


def holds(step: Step) -> bool:
    return step_holds(
        sent=step.sent, answered=step.received, p99_ms=step.lat.ms(99), limit_ms=P99_LIMIT_MS
    )


async def find_max_rate(
    client: Client, budget_s: float, search: str = FULL_SEARCH
) -> tuple[float, list[dict[str, Any]]]:
    """The dispatch scenario's search (:func:`search_max_rate`), with its steps."""
    steps: list[dict[str, Any]] = []
    phase = parse_phase(f"floor=step:{search}")

    async def measure(rate: float) -> bool:
        step = await open_loop(client, rate, phase.seconds)
        ok = holds(step)
        steps.append(
            {
                "rate_per_s": round(step.rate, 1),
                "sent": step.sent,
                "received": step.received,
                "unanswered": step.unanswered,
                "p50_ms": step.lat.ms(50),
                "p99_ms": step.lat.ms(99),
                "held": ok,
            }
        )
        log("floor step", **steps[-1])
        return ok

    deadline = time.monotonic() + budget_s
    best, _ = await search_max_rate(measure, phase, splits=SEARCH_SPLITS, deadline=deadline)
    return best, steps


async def arun(
    duration_s: float = 20.0,
    redis_url: str = DEFAULT_REDIS_URL,
    amqp_url: str = DEFAULT_AMQP_URL,
    connections: int = 16,
    search: str = FULL_SEARCH,
    budget_s: float = math.inf,
) -> dict[str, Any]:
    if duration_s <= 0 or connections < 1:
        raise ValueError(f"need duration_s > 0 and connections >= 1 ({duration_s}, {connections})")
    parse_phase(f"floor=step:{search}")  # a bad search spec fails before anything starts
    deadline = time.monotonic() + budget_s
    prefix = unique_prefix("floor")
    topo = Topology(prefix)
    common = ["--prefix", prefix, "--redis-url", redis_url, "--amqp-url", amqp_url]
    children: list[Child] = []
    client = Client()
    try:
        worker = Child("floor worker", python_module(PROCS, "worker", *common))
        children.append(worker)
        if worker.read_line(30) != "ready":
            raise BenchError("floor worker did not start")
        server = Child("floor server", python_module(PROCS, "server", *common))
        children.append(server)
        line = server.read_line(30)
        if not line.startswith("ready "):
            raise BenchError(f"floor server did not start: {line!r}")
        port = int(line.split()[1])
        await client.open(f"ws://127.0.0.1:{port}/", connections)
        log("floor started", prefix=prefix, port=port, connections=connections)

        low = await low_load(client, duration_s)
        log("floor low load", samples=low.received, p50_ms=low.lat.ms(50), p99_ms=low.lat.ms(99))
        best, steps = await find_max_rate(client, deadline - time.monotonic(), search)
    finally:
        await client.close()
        for child in reversed(children):
            child.stop()
        queues = [topo.dead, topo.node_manager_queue, topo.dispatcher_queue]
        queues.append(topo.gateway_queue(f"{prefix}-gw"))
        await delete_bus(amqp_url, [e.name for e in topo.exchanges()], queues)
        redis = Redis.from_url(redis_url)
        await delete_cell(redis, prefix)
        await redis.aclose()
    return {
        "low_load": {"p50_ms": low.lat.ms(50), "p99_ms": low.lat.ms(99), "samples": low.received},
        "max_sustained_per_s": round(best, 1),
        "p99_limit_ms": P99_LIMIT_MS,
        "search": search,
        "steps": steps,
        "rate_limited_by_time": bool(steps) and all(s["held"] for s in steps),
    }


def run(
    duration_s: float = 20.0,
    redis_url: str = DEFAULT_REDIS_URL,
    amqp_url: str = DEFAULT_AMQP_URL,
    connections: int = 16,
    search: str = FULL_SEARCH,
    budget_s: float = math.inf,
) -> dict[str, Any]:
    """``{"low_load": {"p50_ms", "p99_ms"}, "max_sustained_per_s": float, ...}``: a closed
    loop of ``duration_s``, then the rate search ``search``; no step starts that could not
    end within ``budget_s`` of the start."""
    return run_async(arun(duration_s, redis_url, amqp_url, connections, search, budget_s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    ap.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--search", default=FULL_SEARCH, help="START:FACTOR:MAX:SECONDS")
    args = ap.parse_args()
    emit(run(args.duration, args.redis_url, args.amqp_url, args.connections, args.search))


if __name__ == "__main__":
    main()
