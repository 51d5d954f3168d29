"""Heartbeat coalescing: one bus message per gateway per window instead of one per beat.

At 10,000 nodes at 1 Hz a message per heartbeat costs more CPU than two cores have; a batch
every ~100 ms is ~10 messages/s per gateway, applied by node-manager in one pipelined round
trip. A node's newer beat in the same window replaces its older one.

No batch is dropped: one whose publish fails (a confirm timeout of a slow broker, a broker
down) goes back into the next window, each beat merged with the node's newer one if it beat
again meanwhile (the newer wins; a status or capabilities change only the older one carried
is kept). A node's TTL is refreshed late then, never lost to a batch that was not confirmed.
Batches leave one at a time, so a beat put back is never older than one already confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib

from lingua_gateway.metrics import Metrics
from lingua_shared.bus import Publisher
from lingua_shared.events import Beat, HeartbeatBatch
from lingua_shared.logs import get_logger
from lingua_shared.runtime import now_ms

log = get_logger(__name__)


class HeartbeatCoalescer:
    def __init__(
        self,
        publisher: Publisher,
        gateway_id: str,
        window_ms: int,
        max_batch: int,
        metrics: Metrics,
    ) -> None:
        self.publisher = publisher
        self.gateway_id = gateway_id
        self.window = window_ms / 1000
        self.max_batch = max_batch
        self.metrics = metrics
        self.pending: dict[str, Beat] = {}
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, beat: Beat) -> None:
        older = self.pending.get(beat.node_id)
        self.pending[beat.node_id] = carry_news(older, beat) if older is not None else beat
        if len(self.pending) >= self.max_batch:
            self._full.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.window)
            self._full.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self.pending:
            return
        beats, self.pending = list(self.pending.values()), {}
        for i in range(0, len(beats), self.max_batch):
            chunk = beats[i : i + self.max_batch]
            batch = HeartbeatBatch(gateway_id=self.gateway_id, sent_at_ms=now_ms(), beats=chunk)
            try:
                await self.publisher.event("node.heartbeat.batch", batch, persistent=False)
                self.metrics.heartbeat_batches.observe(len(chunk))
            except Exception as exc:
                # not confirmed: every beat goes back into the next window (see above)
                self.metrics.publish_failures.labels("heartbeat_batch").inc()
                log.warning("gateway.heartbeat_batch_retried", beats=len(chunk), error=repr(exc))
                self.put_back(chunk)

    def put_back(self, beats: list[Beat]) -> None:
        """Beats of a batch that was not confirmed: into the next window, under the node's
        newer beat if there is one."""
        for b in beats:
            newer = self.pending.get(b.node_id)
            self.pending[b.node_id] = carry_news(b, newer) if newer is not None else b

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.flush()


def has_news(beat: Beat) -> bool:
    return beat.status is not None or beat.lang_sets is not None or beat.services is not None


def carry_news(older: Beat, newer: Beat) -> Beat:
    """``newer`` replaces ``older`` in a window, keeping what only ``older`` said (a status or
    capabilities change is sent once, not repeated by the next beat)."""
    if not has_news(older):
        return newer
    update = {
        f: getattr(older, f)
        for f in ("status", "lang_sets", "services")
        if getattr(newer, f) is None and getattr(older, f) is not None
    }
    return newer.model_copy(update=update) if update else newer
