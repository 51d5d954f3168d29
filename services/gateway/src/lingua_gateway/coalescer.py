"""Heartbeat coalescing and flow control: one bus message per gateway per window instead of
one per beat, and never more than a few of them waiting for node-manager.

At 10,000 nodes at 1 Hz a message per heartbeat costs more CPU than two cores have; a batch
every ~100 ms is ~10 messages/s per gateway, applied by node-manager in one pipelined round
trip. A node's newer beat in the same window replaces its older one.

**Flow control.** Each batch carries a sequence number; node-manager marks the largest one it
applied in Redis (``heartbeats_applied.lua``). Before a batch leaves, the gateway waits until
fewer than ``in_flight`` of its batches are unapplied. Meanwhile beats keep arriving and
coalescing, a node's newer beat replacing its older one, so a slow node-manager (a busy
host, a burst of registrations) makes the batches *larger*, never the queue longer: the
backlog is at most one beat per node, each node's TTL is refreshed once per round of
node-manager's work (every node's latest beat), and the apply lag stays bounded by the time
one round of all nodes takes instead of growing until nodes expire. A batch leaves anyway
after ``apply_wait_s`` (1 s, shorter than the 3 s TTL of a 1 Hz node) without a newer mark
(node-manager down, a batch lost with a broker restart), and at once when there is no mark
at all (none applied yet, or Redis lost it).

**Watermark.** Each batch also says up to when the gateway's beats are in it or in an earlier
batch (``covers_ms``: the moment its beats were taken, or just before the oldest beat still
pending when some wait for a later batch, which is most of the time under load); node-manager
records it once the batch is applied, and its expiry sweeper judges deadlines only behind it:
a node whose beat waits here or on the bus is not expired for it. A gateway with no beats
sends an empty batch every ``tick_s``, so that its watermark keeps up with the clock and the
nodes that stopped beating expire on time.

No batch is dropped: one whose publish fails (a confirm timeout of a slow broker, a broker
down) goes back into the next window, each beat merged with the node's newer one if it beat
again meanwhile (the newer wins; a status or capabilities change only the older one carried
is kept). A node's TTL is refreshed late then, never lost to a batch that was not confirmed.
Batches leave one at a time, so a beat put back is never older than one already confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable

from lingua_gateway.metrics import Metrics
from lingua_shared.bus import Publisher
from lingua_shared.events import Beat, HeartbeatBatch
from lingua_shared.logs import get_logger
from lingua_shared.runtime import now_ms

log = get_logger(__name__)
IN_FLIGHT = 2  # unapplied batches a gateway may have on the bus
APPLY_WAIT_S = 1.0  # a batch leaves after this long without node-manager's mark (< a TTL)
POLL_S = 0.02  # how often the mark is read while waiting
TICK_S = 0.5  # an idle gateway's empty batch, which moves its watermark

AppliedMark = Callable[[], Awaitable[int | None]]


class HeartbeatCoalescer:
    def __init__(
        self,
        publisher: Publisher,
        gateway_id: str,
        window_ms: int,
        max_batch: int,
        metrics: Metrics,
        applied: AppliedMark | None = None,
        in_flight: int = IN_FLIGHT,
        apply_wait_s: float = APPLY_WAIT_S,
        tick_s: float = TICK_S,
    ) -> None:
        self.publisher = publisher
        self.gateway_id = gateway_id
        self.window = window_ms / 1000
        self.max_batch = max_batch
        self.metrics = metrics
        self.applied = applied
        self.in_flight = max(1, in_flight)
        self.apply_wait_s = apply_wait_s
        self.pending: dict[str, Beat] = {}
        # when each pending entry's first beat came (its node's oldest unsent beat); entries
        # are added in that order, so the first is the oldest: the watermark's bound
        self.since: dict[str, int] = {}
        # registrations under way (token -> when they began, in that order): until one is
        # answered its node cannot beat, so the watermark waits for it too
        self._registrations: dict[int, int] = {}
        self._taken_since: dict[str, int] = {}  # the last batch taken, until confirmed
        self._tokens = itertools.count()
        # above any number an earlier process with this replica id sent (microseconds)
        self.first_seq = now_ms() * 1000
        self.seq = self.first_seq  # the last one sent
        self.tick_s = tick_s
        self._last_sent = time.monotonic()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def add(self, beat: Beat) -> None:
        older = self.pending.get(beat.node_id)
        if older is None:
            self.pending[beat.node_id] = beat
            self.since[beat.node_id] = beat.ts_ms
        else:
            self.pending[beat.node_id] = carry_news(older, beat)
        if len(self.pending) >= self.max_batch:
            self._full.set()

    def forget(self, node_id: str, conn_id: str) -> None:
        """A connection ended: its pending beat is stale. Sent after the connection's
        disconnect event (another queue), it could give the node back to this connection
        after a newer one registered it."""
        beat = self.pending.get(node_id)
        if beat is not None and beat.conn_id == conn_id:
            del self.pending[node_id]
            self.since.pop(node_id, None)

    def begin_registration(self) -> int:
        """A node's registration began: the watermark stays before it until
        :meth:`end_registration` (one heartbeat interval after its answer: the node's first
        beat is then pending or sent)."""
        token = next(self._tokens)
        self._registrations[token] = now_ms()
        return token

    def end_registration(self, token: int) -> None:
        self._registrations.pop(token, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.window)
            self._full.clear()
            if self._stopping:
                break
            await self.flush()
            if not self.pending and time.monotonic() - self._last_sent >= self.tick_s:
                await self.tick()

    async def tick(self) -> None:
        """An empty batch: the watermark of a gateway that has no beats to send."""
        await self.wait_for_room()
        if not self.pending:  # else the next window's batch carries the watermark
            await self.publish([], self.watermark(now_ms()))

    async def unapplied(self) -> int | None:
        """How many of this process's batches node-manager has not applied yet (None when
        the mark cannot be read)."""
        if self.applied is None:
            return None
        try:
            mark = await self.applied()
        except Exception as exc:
            log.debug("gateway.heartbeat_mark_unreadable", error=repr(exc))
            return None
        if not mark:
            return None  # no mark yet, or Redis lost it (a flush): nothing to wait for
        return self.seq - max(self.first_seq, mark)

    async def wait_for_room(self) -> None:
        """Until fewer than ``in_flight`` batches are unapplied, or ``apply_wait_s`` passed."""
        if self.seq == self.first_seq or self.applied is None:
            return
        t0 = time.monotonic()
        while not self._stopping:
            behind = await self.unapplied()
            if behind is None or behind < self.in_flight:
                break
            if time.monotonic() - t0 >= self.apply_wait_s:
                self.metrics.heartbeat_flow_timeouts.inc()
                log.warning(
                    "gateway.heartbeat_batches_unapplied",
                    unapplied=behind,
                    waited_s=round(time.monotonic() - t0, 2),
                )
                break
            await asyncio.sleep(POLL_S)
        self.metrics.heartbeat_flow_wait.observe(time.monotonic() - t0)

    async def flush(self, wait: bool = True) -> None:
        """Send what is pending, ``max_batch`` beats at a time; with ``wait``, each batch
        waits for room first, taking the beats that arrived meanwhile too."""
        # as many batches as the beats pending now need: beats that arrive meanwhile ride
        # along, but do not keep the loop sending small batches between windows
        for _ in range(-(-len(self.pending) // self.max_batch)):
            if wait:
                await self.wait_for_room()
            if not self.pending:
                return
            cut = now_ms()
            chunk = self.take(self.max_batch)
            if not await self.publish(chunk, self.watermark(cut)):
                return  # put back: the next window tries again

    def take(self, n: int) -> list[Beat]:
        ids = list(itertools.islice(self.pending, n))
        # kept until the batch is confirmed: a beat put back waits since its first time
        self._taken_since = {node_id: self.since.pop(node_id) for node_id in ids}
        return [self.pending.pop(node_id) for node_id in ids]

    def watermark(self, cut: int) -> int:
        """Every beat read before this is in a batch already sent or being sent: ``cut`` when
        nothing stays pending, else just before the oldest beat that does, and before the
        oldest registration still under way (its node's first beat is yet to come)."""
        mark = cut
        for oldest in (self.since, self._registrations):
            if oldest:
                mark = min(mark, next(iter(oldest.values())) - 1)
        return mark

    async def publish(self, chunk: list[Beat], covers_ms: int | None) -> bool:
        seq = self.seq + 1
        batch = HeartbeatBatch(
            gateway_id=self.gateway_id,
            sent_at_ms=now_ms(),
            beats=chunk,
            seq=seq,
            covers_ms=covers_ms,
        )
        try:
            await self.publisher.event("node.heartbeat.batch", batch, persistent=False)
        except Exception as exc:
            # not confirmed: every beat goes back into the next window (see above)
            self.metrics.publish_failures.labels("heartbeat_batch").inc()
            log.warning("gateway.heartbeat_batch_retried", beats=len(chunk), error=repr(exc))
            self.put_back(chunk)
            return False
        self.seq = seq
        self._last_sent = time.monotonic()
        if chunk:
            self.metrics.heartbeat_batches.observe(len(chunk))
        return True

    def put_back(self, beats: list[Beat]) -> None:
        """Beats of a batch that was not confirmed: back at the front of the next window (they
        are the oldest), under the node's newer beat if there is one."""
        pending: dict[str, Beat] = {}
        since: dict[str, int] = {}
        for b in beats:
            newer = self.pending.pop(b.node_id, None)
            pending[b.node_id] = carry_news(b, newer) if newer is not None else b
            first = self._taken_since.get(b.node_id, b.ts_ms)
            since[b.node_id] = min(first, self.since.pop(b.node_id, first))
        pending.update(self.pending)
        since.update(self.since)
        self.pending, self.since = pending, since

    async def stop(self) -> None:
        """End the loop by a flag, never by waiting on a cancellation: one that lands inside
        redis-py (the mark is read every tick) can be swallowed there, and a drain that awaited
        it hung until the process was killed. Then send what is pending."""
        self._stopping = True
        self._full.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=self.apply_wait_s + 1)
            if not done:
                self._task.cancel()
            elif not self._task.cancelled() and self._task.exception() is not None:
                log.warning("gateway.heartbeat_loop_failed", error=repr(self._task.exception()))
        await self.flush(wait=False)


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
