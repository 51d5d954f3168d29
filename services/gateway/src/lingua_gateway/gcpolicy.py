"""Keep the garbage collector's full passes short in a process that holds many connections.

Each open WebSocket is ~100 objects the cyclic collector tracks (connection, protocol,
reader, tasks, futures, our NodeConnection and its outbound queue). CPython runs a full pass
whenever the objects promoted since the last one exceed a quarter of the survivors, and a
full pass walks every tracked object with the event loop stopped, for a time that grows with
the fleet (hundreds of ms at thousands of nodes). During such a pause no frame is read, and
heartbeat batches can wait past a 1 Hz node's 3 s TTL: nodes would expire.

So the long-lived objects are moved out of the collector's sight: ``gc.freeze()`` every
``freeze_every_s`` puts what exists into the permanent generation, and automatic passes then
only walk what was created since. Reference cycles of objects frozen while alive (a closed
connection's) are reclaimed by one full pass every ``full_every_s``: ``unfreeze``, collect,
freeze again, one pause at a known rhythm instead of many at random. Every full pass, ours
or automatic, is timed into ``lingua_gateway_gc_pause_seconds``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from prometheus_client import Histogram

from lingua_shared.logs import get_logger

log = get_logger(__name__)


class GcPolicy:
    def __init__(self, freeze_every_s: float, full_every_s: float, pauses: Histogram) -> None:
        self.freeze_every_s = freeze_every_s
        self.full_every_s = full_every_s
        self.pauses = pauses
        self._started: float | None = None
        self._task: asyncio.Task[None] | None = None

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pauses.observe(time.perf_counter() - self._started)
            self._started = None

    def start(self) -> None:
        gc.callbacks.append(self._observe)
        if self.freeze_every_s > 0:
            gc.freeze()
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while True:
            await asyncio.sleep(self.freeze_every_s)
            if loop.time() - last_full >= self.full_every_s:
                last_full = loop.time()
                self.full_pass()
            else:
                gc.freeze()

    def full_pass(self) -> int:
        """Collect everything, frozen objects included, then freeze the survivors again."""
        t = time.perf_counter()
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        log.info(
            "gateway.gc_full_pass",
            frozen_before=frozen,
            frozen_after=gc.get_freeze_count(),
            collected=collected,
            ms=round((time.perf_counter() - t) * 1000, 1),
        )
        return collected

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)
        gc.unfreeze()
