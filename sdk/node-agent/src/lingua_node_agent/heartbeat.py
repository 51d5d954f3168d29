"""Pacing and content of one node's ``node_heartbeat`` messages.

Heartbeats are what keep a node schedulable (its Redis TTL, requirement N3/N5), so they must go
out on time even while the agent is busy, must never pile up behind a slow socket, and must
say ``draining`` the moment a shutdown begins so the scheduler stops choosing the node.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lingua_node_agent.resources import ResourceSampler
from lingua_node_agent.ticker import HeartbeatTicker, Subscription
from lingua_shared.protocol import (
    CapabilityByType,
    InstalledService,
    LanguageCapabilities,
    NodeHeartbeat,
    WireModel,
)


class HeartbeatPacer:
    """Sends one heartbeat at :meth:`start` and then one per interval, via a shared ticker.

    Between :meth:`start` (on each ``node_register_ack``) and :meth:`stop` (on connection
    loss) it beats for ``node_id``; ``draining`` adds our optional ``status: "draining"``.
    ``language_capabilities`` (lingua's agent repeats them in every beat) joins the constant
    part, and ``gpu_percent_default`` fills ``gpu_percent`` when the sampler has none (lingua's
    agent always sends one, 0.0 without a GPU reading).
    """

    def __init__(
        self,
        ticker: HeartbeatTicker,
        sampler: ResourceSampler,
        send: Callable[[WireModel | dict[str, Any]], Awaitable[bool]],
        running_jobs: Callable[[], int],
        capacity: int,
        services: list[InstalledService] | None,
        capabilities: list[CapabilityByType] | None,
        rng: random.Random,
        jitter: bool = False,
        language_capabilities: LanguageCapabilities | None = None,
        gpu_percent_default: float | None = None,
    ) -> None:
        self.sent = 0
        self.draining = False
        self.node_id: str | None = None
        self._ticker = ticker
        self._sampler = sampler
        self._send = send
        self._running_jobs = running_jobs
        self._capacity = capacity
        # The service lists never change between beats: serialise them once, not per beat
        # (this halves the cost of a beat, which matters with thousands of simulated nodes).
        self._static: dict[str, Any] = {}
        if services is not None:
            self._static["installed_services"] = [s.to_wire() for s in services]
        if capabilities is not None:
            self._static["capability_by_type"] = [c.to_wire() for c in capabilities]
        if language_capabilities is not None:
            self._static["language_capabilities"] = language_capabilities.to_wire()
        self._gpu_default = gpu_percent_default
        self._rng = rng
        self._jitter = jitter
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, node_id: str, interval_s: float) -> None:
        """Beat once now, then every ``interval_s``. With ``jitter`` the second beat comes
        after 0.5-1 interval, so nodes registered in the same instant drift out of phase."""
        self.stop()
        self.node_id = node_id
        await self.send_now()
        first = interval_s * self._rng.uniform(0.5, 1.0) if self._jitter else interval_s
        self._sub = self._ticker.schedule(self._beat, interval_s, first)

    @property
    def running(self) -> bool:
        """Between :meth:`start` and :meth:`stop`."""
        return self._sub is not None

    def stop(self) -> None:
        """No more beats until the next :meth:`start` (the connection is gone)."""
        self.node_id = None
        if self._sub is not None:
            self._sub.cancel()
            self._sub = None

    async def close(self) -> None:
        """Stop and wait out a send in progress (so no task outlives the agent)."""
        self.stop()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _beat(self) -> None:
        # Ticker callback: must not block. Skip a beat rather than queue a second send
        # behind one that a full socket buffer is holding up.
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.send_now())

    async def send_now(self) -> None:
        """One heartbeat with fresh load figures (no-op while not started)."""
        node_id = self.node_id
        if node_id is None:
            return
        usage = self._sampler.sample(self._running_jobs(), self._capacity)
        if usage.gpu_percent is None and self._gpu_default is not None:
            usage.gpu_percent = self._gpu_default
        hb = NodeHeartbeat(
            node_id=node_id,
            timestamp=time.time_ns() // 1_000_000,
            resource_usage=usage,
            # "status" is our optional field; extra="allow" carries it.
            **({"status": "draining"} if self.draining else {}),
        ).to_wire()
        hb.update(self._static)
        if await self._send(hb):
            self.sent += 1
