"""One timer task that drives the heartbeats of any number of agents.

A simulator of thousands of nodes with one sleeping task per node pays for thousands of
timers and task switches; here every agent is an entry in one heap ordered by due time, and a
single task wakes for whatever is due next. A single agent uses the same class with one
entry, so both paths are the same code.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class Subscription:
    """One agent's place in the ticker: its callback and its (mutable) interval."""

    __slots__ = ("active", "beat", "interval_s")

    def __init__(self, beat: Callable[[], None], interval_s: float) -> None:
        self.beat = beat
        self.interval_s = interval_s
        self.active = True

    def cancel(self) -> None:
        """Stop beating. The heap entry is dropped lazily when it comes due (no O(n) removal)."""
        self.active = False


class HeartbeatTicker:
    """Calls each subscription's ``beat()`` every ``interval_s``, from one task (:meth:`run`).

    ``beat`` must not block: the agent's callback only starts a send. Entries due within
    ``resolution_s`` of each other fire in the same wake-up, which bounds the wake-ups per
    second however many agents share the ticker.
    """

    def __init__(self, resolution_s: float = 0.01) -> None:
        self.resolution_s = resolution_s
        self._heap: list[tuple[float, int, Subscription]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None

    def schedule(
        self, beat: Callable[[], None], interval_s: float, first_delay_s: float | None = None
    ) -> Subscription:
        """Start beating ``interval_s`` apart; the first beat after ``first_delay_s``
        (default: one interval). Must be called from the event loop's thread."""
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        sub = Subscription(beat, interval_s)
        delay = interval_s if first_delay_s is None else max(0.0, first_delay_s)
        due = asyncio.get_running_loop().time() + delay
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (due, next(self._seq), sub))
        if self._wake is not None and (earliest is None or due < earliest):
            self._wake.set()
        return sub

    def pending(self) -> int:
        """Heap entries, including cancelled ones not yet dropped (for tests and status).

        Deliberately not ``__len__``: an empty ticker must not be falsy."""
        return len(self._heap)

    async def run(self) -> None:
        """Fire due beats forever; cancel the task to stop."""
        loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        heap = self._heap
        try:
            while True:
                if not heap:
                    wake.clear()
                    await wake.wait()
                    continue
                now = loop.time()
                if heap[0][0] > now:
                    wake.clear()
                    try:
                        async with asyncio.timeout(heap[0][0] - now):
                            await wake.wait()
                    except TimeoutError:
                        pass
                    continue
                self._fire_due(now)
                # Yield even when beats are always due, so a flood never starves the loop.
                await asyncio.sleep(0)
        finally:
            self._wake = None

    def _fire_due(self, now: float) -> None:
        heap = self._heap
        horizon = now + self.resolution_s
        while heap and heap[0][0] <= horizon:
            due, _, sub = heapq.heappop(heap)
            if not sub.active:
                continue
            try:
                sub.beat()
            except Exception:
                log.exception("heartbeat callback failed")
            if not sub.active:
                continue
            nxt = due + sub.interval_s
            if nxt < now:
                # Fell more than an interval behind (a stalled loop): skip missed beats
                # rather than sending a burst of them.
                nxt = now + sub.interval_s
            heapq.heappush(heap, (nxt, next(self._seq), sub))
