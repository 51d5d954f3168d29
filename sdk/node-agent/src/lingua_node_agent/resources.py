"""Load figures for heartbeats: real ones from psutil, cheap fake ones for the simulator.

Selection prefers the least loaded node (requirement J4), so a real agent must report real
numbers; a simulator of thousands of nodes must not call psutil thousands of times a second
for numbers that would all be the same machine's anyway.
"""

from __future__ import annotations

import random
from typing import Protocol

import psutil

from lingua_shared.protocol import ResourceUsage


class ResourceSampler(Protocol):
    """Produces the ``resource_usage`` of one heartbeat."""

    def sample(self, running_jobs: int, capacity: int) -> ResourceUsage: ...


class PsutilSampler:
    """This machine's CPU and memory use, read without blocking.

    ``psutil.cpu_percent(interval=None)`` returns the use since the previous call, so it is
    primed once here; later calls cost a few microseconds and never sleep.
    """

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)

    def sample(self, running_jobs: int, capacity: int) -> ResourceUsage:
        return ResourceUsage(
            cpu_percent=psutil.cpu_percent(interval=None),
            mem_percent=psutil.virtual_memory().percent,
            running_jobs=running_jobs,
        )


class SimulatedSampler:
    """Plausible numbers that follow the simulated job load, plus a little noise.

    One random draw per heartbeat keeps it cheap; the load term makes a busy simulated node
    look busy to the scheduler, as a real one would.
    """

    def __init__(self, rng: random.Random | None = None, base_mem_percent: float = 35.0) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._base_mem = base_mem_percent

    def sample(self, running_jobs: int, capacity: int) -> ResourceUsage:
        load = running_jobs / capacity if capacity > 0 else 0.0
        noise = self._rng.random() * 5.0
        return ResourceUsage(
            cpu_percent=round(min(100.0, 5.0 + 60.0 * load + noise), 1),
            mem_percent=round(min(100.0, self._base_mem + 20.0 * load), 1),
            gpu_percent=round(min(100.0, 90.0 * load + noise), 1),
            running_jobs=running_jobs,
        )
