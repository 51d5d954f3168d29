"""The services as real processes for one benchmark scenario, the way the integration tests
and ``make up`` run them (:class:`lingua_shared.devstack.ServiceProcess`).

Each scenario gets a fresh stack on free ports, its own Redis cell and bus prefix, so one
scenario's nodes and queues never leak into the next; :meth:`BenchStack.cleanup` removes the
cell's keys and the prefix's queues and exchanges afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from lingua_bench.procstat import find_pids
from lingua_shared.bus import delete_bus
from lingua_shared.devstack import SERVICES, ServiceProcess, free_port
from lingua_shared.keys import Keys


@dataclass
class BenchStack:
    redis_url: str
    amqp_url: str
    log_dir: Path
    tag: str
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        run = uuid.uuid4().hex[:8]
        self.cell = f"bench-{self.tag}-{run}"
        self.bus_prefix = f"lingua-bench-{self.tag}-{run}"
        self.base_env = {
            "LINGUA_REDIS_URL": self.redis_url,
            "LINGUA_AMQP_URL": self.amqp_url,
            "LINGUA_CELL": self.cell,
            "LINGUA_BUS_PREFIX": self.bus_prefix,
            **self.env,
        }

    def start(self, *services: str) -> None:
        """Start each service and wait until every one is ready."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in services:
            module, _ = SERVICES[service]
            p = ServiceProcess(
                service,
                module,
                free_port(),
                {**self.base_env, "LINGUA_INSTANCE_ID": f"{service}-{self.cell}"},
                self.log_dir / f"{self.tag}-{service}.log",
            )
            p.start()
            self.procs[service] = p
        for p in self.procs.values():
            p.wait_ready(60)

    @property
    def gateway_ws(self) -> str:
        return f"ws://127.0.0.1:{self.procs['gateway'].port}"

    def pids(self) -> dict[str, list[int]]:
        """Service PIDs, plus Redis and RabbitMQ (shared with the rest of the machine)."""
        out = {n: [p.proc.pid] for n, p in self.procs.items() if p.proc is not None}
        redis_pid = asyncio.run(_redis_pid(self.redis_url))
        if redis_pid:
            out["redis"] = [redis_pid]
        beam = find_pids("beam.smp")
        if beam:
            out["rabbitmq"] = beam
        return out

    def stop(self) -> dict[str, int | None]:
        return {name: p.stop() for name, p in reversed(self.procs.items())}

    def cleanup(self) -> None:
        """Delete the cell's keys and the bus prefix's queues and exchanges."""
        asyncio.run(_cleanup(self.redis_url, self.amqp_url, self.cell, self.bus_prefix))


async def _redis_pid(url: str) -> int | None:
    r = Redis.from_url(url)
    try:
        info = await r.info("server")
        return int(info.get("process_id") or 0) or None
    except Exception:
        return None
    finally:
        await r.aclose()


async def _cleanup(redis_url: str, amqp_url: str, cell: str, prefix: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        pattern = Keys(cell).prefix.replace("{", "[{]").replace("}", "[}]") + "*"
        batch: list[bytes] = []
        async for key in r.scan_iter(match=pattern, count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                await r.unlink(*batch)
                batch = []
        if batch:
            await r.unlink(*batch)
    finally:
        await r.aclose()
    await delete_bus(amqp_url, prefix)
