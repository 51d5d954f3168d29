"""Many simulated nodes in one process: load and failure testing of the scheduler.

Each simulated node is a real :class:`NodeAgent` with its own WebSocket, so the gateway sees
exactly what real nodes send; what is shared is everything that would otherwise cost per
node: one heartbeat timer (:class:`HeartbeatTicker`), one fake load sampler, one fake
hardware description and one simulated handler. Nodes are spread round-robin over regions,
GPU tiers and language sets so that a run of N nodes fills many pools at once (requirement N8).

With ``profile="lingua"`` every node behaves as lingua's own agent (no acks, one reconnect,
withheld repeats...; see the README), and ``withhold_rate`` makes that share of results
repeat the session's previous text so that the agents withhold them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from lingua_node_agent.agent import NodeAgent
from lingua_node_agent.config import DEFAULT_GATEWAY, PROFILES, STANDARD, AgentConfig, check_ranges
from lingua_node_agent.errors import ConfigError, RegistrationRejected
from lingua_node_agent.handlers import SimulatedHandler
from lingua_node_agent.job_runner import PROCESSING_ERROR
from lingua_node_agent.resources import SimulatedSampler
from lingua_node_agent.ticker import HeartbeatTicker
from lingua_shared.protocol import ErrorCode, Hardware

log = logging.getLogger(__name__)

SIM_HARDWARE = {"a100": 80.0, "h100": 80.0, "l4": 24.0, "t4": 16.0}


@dataclass
class SimConfig:
    """What ``lingua-node-agent simulate`` takes; see the CLI help for each field."""

    count: int = 10
    gateway: str = DEFAULT_GATEWAY
    profile: str = STANDARD
    processing_ms: float = 50.0
    # when set, each job's time is uniform in [processing_ms, processing_max_ms]
    processing_max_ms: float | None = None
    failure_rate: float = 0.0
    # lingua profile: share of results repeating the session's previous text (withheld)
    withhold_rate: float = 0.0
    lang_sets: list[list[str]] = field(default_factory=lambda: [["en", "zh"], ["en", "ja", "zh"]])
    regions: list[str] = field(default_factory=lambda: ["eu", "us"])
    gpu_tiers: list[str] = field(default_factory=lambda: ["a100", "t4"])
    id_prefix: str = "sim"
    heartbeat_interval_ms: int | None = None  # None: the profile's default (1 s / 15 s)
    capacity: int = 4
    drain_timeout_s: float = 10.0
    duration_s: float | None = None
    status_interval_s: float = 5.0
    ramp_s: float = 0.0
    seed: int | None = None

    def node_config(self, i: int) -> AgentConfig:
        """Node ``i``'s settings: region varies fastest, then GPU tier, then language set."""
        nr, ng = len(self.regions), len(self.gpu_tiers)
        langs = self.lang_sets[(i // (nr * ng)) % len(self.lang_sets)]
        return AgentConfig(
            gateway=self.gateway,
            node_id=f"{self.id_prefix}-{i:05d}" if self.id_prefix else None,
            region=self.regions[i % nr],
            gpu_tier=self.gpu_tiers[(i // nr) % ng],
            lang_sets=[list(langs)],
            asr_langs=sorted(set(langs)),
            semantic_langs=sorted(set(langs)),
            capacity=self.capacity,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            drain_timeout_s=self.drain_timeout_s,
            platform=f"simulator-{sys.platform}",
            profile=self.profile,
        )

    def validate(self) -> None:
        if self.count < 1:
            raise ConfigError("count must be >= 1")
        if not (self.lang_sets and self.regions and self.gpu_tiers):
            raise ConfigError("lang_sets, regions and gpu_tiers must each have an entry")
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ConfigError("failure_rate must be within 0..1")
        if not 0.0 <= self.withhold_rate <= 1.0:
            raise ConfigError("withhold_rate must be within 0..1")
        if self.withhold_rate and self.profile != "lingua":
            raise ConfigError("withhold_rate needs the lingua profile (only it withholds)")
        if self.processing_ms < 0 or self.ramp_s < 0 or self.status_interval_s <= 0:
            raise ConfigError("processing_ms and ramp_s must be >= 0, status_interval_s > 0")
        if self.processing_max_ms is not None and self.processing_max_ms < self.processing_ms:
            raise ConfigError("processing_max_ms must be >= processing_ms")
        check_ranges(self.node_config(0))


class Simulator:
    """``await run()`` drives ``count`` agents until :meth:`stop` or ``duration_s``."""

    def __init__(self, config: SimConfig, status: Callable[[str], None] | None = None) -> None:
        config.validate()
        self.config = config
        self.rejected: list[RegistrationRejected] = []
        self._status = status if status is not None else _print_status
        self._rng = random.Random(config.seed)
        self.ticker = HeartbeatTicker(resolution_s=0.02)
        lingua = config.profile == "lingua"
        self.handler = handler = SimulatedHandler(
            config.processing_ms,
            config.failure_rate,
            self._rng,
            processing_max_ms=config.processing_max_ms,
            withhold_rate=config.withhold_rate,
            failure_code=PROCESSING_ERROR if lingua else ErrorCode.INTERNAL_ERROR,
        )
        sampler = SimulatedSampler(self._rng)
        self.agents = [
            NodeAgent(
                cfg,
                handler,
                ticker=self.ticker,
                resources=sampler,
                hardware=_sim_hardware(cfg.gpu_tier or ""),
                rng=random.Random(self._rng.random()),
                jitter_heartbeats=True,
            )
            for cfg in (config.node_config(i) for i in range(config.count))
        ]
        self._stopping = False

    def stop(self, drain: bool = True) -> None:
        """Stop every agent (draining by default); safe from a signal handler."""
        self._stopping = True
        for agent in self.agents:
            agent.stop(drain=drain, reason="simulator stopping")

    def registered_ids(self) -> set[str]:
        return {a.node_id for a in self.agents if a.registered.is_set() and a.node_id}

    def status_line(self) -> str:
        agents = self.agents
        return (
            f"sim: registered={sum(a.registered.is_set() for a in agents)}/{len(agents)}"
            f" connected={sum(a.connected for a in agents)}"
            f" reconnects={sum(a.reconnects for a in agents)}"
            f" heartbeats={sum(a.heartbeats_sent for a in agents)}"
            f" jobs_ok={sum(a.jobs.completed for a in agents)}"
            f" jobs_failed={sum(a.jobs.failed for a in agents)}"
            f" jobs_refused={sum(a.jobs.rejected for a in agents)}"
            f" running={sum(a.jobs.running_jobs for a in agents)}"
            f" withheld={sum(a.jobs.withheld for a in agents)}"
        )

    async def run(self) -> None:
        """Start the agents (spread over ``ramp_s``), then wait for all of them to end."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self.ticker.run()), loop.create_task(self._report())]
        timer = loop.call_later(cfg.duration_s, self.stop) if cfg.duration_s else None
        tasks: list[asyncio.Task[None]] = []
        try:
            step = cfg.ramp_s / len(self.agents)
            for agent in self.agents:
                tasks.append(loop.create_task(agent.run()))
                if step and not self._stopping:
                    await asyncio.sleep(step)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, RegistrationRejected):
                    self.rejected.append(result)
                elif isinstance(result, BaseException):
                    log.error("simulated agent crashed", exc_info=result)
        finally:
            if timer is not None:
                timer.cancel()
            for task in tasks:
                task.cancel()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*tasks, *helpers, return_exceptions=True)
            self._status(self.status_line())

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            self._status(self.status_line())


@functools.cache
def _sim_hardware(gpu_tier: str) -> Hardware:
    memory = SIM_HARDWARE.get(gpu_tier, 24.0)
    return Hardware(cpu_cores=16, memory_gb=64.0, gpus=[{"name": gpu_tier, "memory_gb": memory}])


def _print_status(line: str) -> None:
    print(line, flush=True)
