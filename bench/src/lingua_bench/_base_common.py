"""What the baseline benchmarks (floor, peer, select, stats) share: histograms, a pool of
registered nodes, cleanup of what a run created, and child processes stopped by PID.

Every run names what it creates after one unique prefix (``benchbase-<hex>``): Redis keys in
their own cell, RabbitMQ exchanges and queues. Cleanup deletes exactly those, never a whole
database or broker, because the servers are shared with other runs and the test suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from typing import IO, Any, TypeVar

import psutil
from hdrh.histogram import HdrHistogram
from redis.asyncio import Redis

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.runtime import install_uvloop
from lingua_shared.scripts import Scripts, heartbeat_with_pool_assign, register_node_v2

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# one language pair, one region, one GPU tier: every node lands in one pool group, which
# the heartbeat script splits into shards of at most 256 members
PAIR = ("zh", "en")
NODE_SERVICES = {"asr": ["en", "zh"], "semantic": ["en", "zh"]}
NODE_TTL_MS = 600_000


T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop, as the services run, leaving the caller's loop policy as it
    was (a runner or a test session goes on with its own)."""
    policy = asyncio.get_event_loop_policy()
    install_uvloop()
    try:
        return asyncio.run(coro)
    finally:
        asyncio.set_event_loop_policy(policy)


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (a child died, a dependency is missing)."""


def log(what: str, **fields: Any) -> None:
    """Progress on stderr, so stdout carries nothing but the JSON figures."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"[bench] {what} {extra}".rstrip(), file=sys.stderr, flush=True)


def unique_prefix(kind: str = "") -> str:
    tail = uuid.uuid4().hex[:8]
    return f"benchbase-{kind}-{tail}" if kind else f"benchbase-{tail}"


def emit(figures: dict[str, Any]) -> None:
    """``python -m lingua_bench.<module>``: the figures as JSON on stdout."""
    print(json.dumps(figures, indent=2))


# --- latency histograms ------------------------------------------------------------------------
class Latency:
    """An HDR histogram of durations recorded in nanoseconds, read in ms or microseconds."""

    def __init__(self, highest_s: float = 60.0) -> None:
        # 1 ns .. highest_s at 3 significant figures
        self.h = HdrHistogram(1, int(highest_s * 1e9), 3)

    def record_ns(self, ns: int) -> None:
        self.h.record_value(max(1, min(ns, self.h.highest_trackable_value)))

    @property
    def count(self) -> int:
        return int(self.h.get_total_count())

    def pct_ns(self, q: float) -> int:
        return int(self.h.get_value_at_percentile(q))

    def ms(self, q: float) -> float:
        return round(self.pct_ns(q) / 1e6, 3)

    def us(self, q: float) -> float:
        return round(self.pct_ns(q) / 1e3, 1)


def percentiles_ns(samples_ns: Iterable[int], qs: Sequence[float] = (50.0, 99.0)) -> list[int]:
    lat = Latency()
    for s in samples_ns:
        lat.record_ns(s)
    return [lat.pct_ns(q) for q in qs]


# --- a pool of registered nodes ------------------------------------------------------------------
async def register_pool(
    scripts: Scripts,
    redis: Redis,
    count: int,
    *,
    start: int = 0,
    capacity: int = 4,
    batch: int = 500,
    prefix: str = "bn",
) -> list[str]:
    """Register ``count`` nodes of one pair the way production does: register_node_v2, then a
    first heartbeat that puts each node in its pool shard. Pipelined: set-up, not measured."""
    now = int(time.time() * 1000)
    ids = [f"{prefix}-{i:06d}" for i in range(start, start + count)]
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        try:
            await scripts.run_all(
                register_node_v2,
                [
                    {
                        "node_id": node_id,
                        "now_ms": now,
                        "ttl_ms": NODE_TTL_MS,
                        "region": "eu",
                        "gpu_tier": "a100",
                        "lang_sets": [sorted(PAIR)],
                        "capacity": capacity,
                        "services": NODE_SERVICES,
                        "gateway_id": "bench-gw",
                        "conn_id": f"c-{node_id}",
                    }
                    for node_id in chunk
                ],
                return_exceptions=False,
            )
            beats = await scripts.run_all(
                heartbeat_with_pool_assign,
                [
                    {
                        "node_id": node_id,
                        "conn_id": f"c-{node_id}",
                        "gateway_id": "bench-gw",
                        "now_ms": now,
                    }
                    for node_id in chunk
                ],
                return_exceptions=False,
            )
        except ScriptRejected as exc:
            raise BenchError(f"node set-up rejected: {exc.message}") from exc
        bad = [b for b in beats if not b.alive]
        if bad:
            raise BenchError(f"node set-up rejected: {bad[0]!r}")
    return ids


# --- cleanup -----------------------------------------------------------------------------------
async def delete_keys(redis: Redis, pattern: str) -> int:
    """UNLINK every key matching ``pattern`` (SCAN, never KEYS: the server is shared)."""
    n = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            n += await redis.unlink(*batch)
            batch.clear()
    if batch:
        n += await redis.unlink(*batch)
    return n


async def delete_cell(redis: Redis, cell: str) -> int:
    return await delete_keys(redis, Keys(cell).prefix.replace("{", "\\{").replace("}", "\\}") + "*")


async def delete_bus(amqp_url: str, exchanges: Iterable[str], queues: Iterable[str]) -> None:
    """Delete a run's queues and exchanges by name (absent ones are fine)."""
    import aio_pika

    conn = await aio_pika.connect(amqp_url, timeout=5)
    try:
        for q in queues:
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.queue_delete(q)
            with contextlib.suppress(Exception):
                await ch.close()
        for ex in exchanges:
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.exchange_delete(ex)
            with contextlib.suppress(Exception):
                await ch.close()
    finally:
        await conn.close()


# --- child processes -----------------------------------------------------------------------------
class Child:
    """A child process in its own session, stopped by its PID (SIGTERM, then SIGKILL of its
    process group: a Celery prefork master's children go with it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=None,  # inherited: a child's errors show up in the run's log
            env={**os.environ, **(env or {})},
            start_new_session=True,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout: float) -> str:
        """The child's next stdout line (its readiness handshake), or :class:`BenchError`."""
        out: IO[str] = self.proc.stdout  # type: ignore[assignment]
        sel = selectors.DefaultSelector()
        sel.register(out, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise BenchError(f"{self.name}: no answer within {timeout} s")
        finally:
            sel.close()
        line = out.readline()
        if not line:
            raise BenchError(f"{self.name} exited with {self.proc.wait()} before it was ready")
        return line.strip()

    def stop(self, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                # not reaped yet, so its PID still names its own process group: its
                # leftovers (prefork children) go with it
                log(f"{self.name}: no exit after SIGTERM, killing", pid=self.proc.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def stop_tree(pid: int) -> None:
    """SIGTERM a process and everything it started (the bench's services live in sessions of
    their own, so its process group does not hold them); SIGKILL what is left after 10 s."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
