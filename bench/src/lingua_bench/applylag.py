"""Heartbeat apply lag: from a beat leaving the node to its TTL refresh being visible in Redis.

A sample of nodes is polled every ``interval_s`` with one pipelined ``HMGET`` per node of the
two fields the heartbeat script writes in the same call as its ``PEXPIRE``: ``cpu_percent``
(the beat's sequence number, see :mod:`lingua_bench.fleet`) and ``last_heartbeat_ts``. When
a poll sees a new sequence number, that beat is applied; its lag is

- *observed*: the poll's wall time minus the beat's send time — an upper bound, at most
  one poll interval (plus a Redis round trip) too high;
- *stamped*: node-manager's ``now_ms`` for the batch minus the send time — a lower bound
  (the script runs a little after the stamp, in the same pipeline).

The figure reported as ``apply_lag_p99_ms`` is the observed one: the conservative side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.asyncio import Redis

from lingua_bench.fleet import BenchNode, cpu_to_seq
from lingua_bench.hist import Latency
from lingua_shared.keys import Keys


class ApplyLagSampler:
    def __init__(
        self, redis: Redis, keys: Keys, nodes: list[BenchNode], interval_s: float = 0.05
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.nodes = nodes
        self.interval_s = interval_s
        t0 = time.monotonic_ns()
        self.observed = Latency("apply_lag_observed", t0)
        self.stamped = Latency("apply_lag_stamped", t0)
        self.missing = 0  # polls that found a sampled node's record gone
        self.unmatched = 0  # applied beats whose send time had already been forgotten
        self._seen: dict[str, int] = {}
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Poll until :meth:`stop`. Not until cancelled: a cancellation that lands inside
        redis-py's pipeline can be swallowed there, and the loop then polled on for good
        while the phase waited for it (the heartbeat phase that never ended)."""
        names = [self.keys.node(n.node_id) for n in self.nodes]
        while not self._stop.is_set():
            async with self.redis.pipeline(transaction=False) as pipe:
                for k in names:
                    pipe.hmget(k, "cpu_percent", "last_heartbeat_ts")
                rows = await pipe.execute()
            wall_ms = time.time_ns() / 1e6
            mono = time.monotonic_ns()
            for node, (cpu, stamp) in zip(self.nodes, rows, strict=True):
                if stamp is None:
                    self.missing += 1
                    continue
                if cpu is None:
                    continue  # registered, no beat of ours applied yet
                seq = cpu_to_seq(float(cpu))
                if self._seen.get(node.node_id) == seq:
                    continue
                first = node.node_id not in self._seen
                self._seen[node.node_id] = seq
                if first:
                    continue  # what was there before sampling started: no send time to match
                sent = _sent_at(node, seq)
                if sent is None:
                    self.unmatched += 1
                    continue
                self.observed.record_ns(int((wall_ms - sent) * 1e6), mono)
                if stamp is not None:
                    lag = max(0.0, float(stamp) - sent)
                    self.stamped.record_ns(int(lag * 1e6), mono)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)


def _sent_at(node: BenchNode, seq: int) -> float | None:
    if node.sent_ms is None:
        return None
    for s, ms in reversed(node.sent_ms):
        if s == seq:
            return ms
    return None
