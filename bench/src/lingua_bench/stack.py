"""The services as real processes for one benchmark scenario, the way the integration tests
and ``make up`` run them (:class:`lingua_shared.devstack.ServiceProcess`).

Each scenario gets a fresh stack on free ports, its own Redis cell and bus prefix, so one
scenario's nodes and queues never leak into the next; :meth:`BenchStack.cleanup` removes the
cell's keys and the prefix's queues and exchanges afterwards.

A service can run as several replicas (:meth:`BenchStack.add_replicas`): the same cell and
bus prefix, each its own ``LINGUA_INSTANCE_ID``, port and log, kept in ``procs`` as
``gateway``, ``gateway-2``, ... The first replica keeps the plain name, so ``gateway_ws`` is
the first gateway; :meth:`BenchStack.pids` puts every replica's PID under the plain name, so a
service's CPU is that of all its replicas.
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
        for service in services:
            self._spawn(service, service)
        for p in self.procs.values():
            p.wait_ready(60)

    def add_replicas(self, service: str, count: int) -> list[ServiceProcess]:
        """Run ``service`` as ``count`` replicas in all: start the missing ones (``<service>-2``
        ...) after the first, wait until they are ready; every replica, first one first."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        if count < 1:
            raise ValueError(f"replicas must be >= 1, got {count}")
        new = [
            self._spawn(service, name)
            for k in range(1, count + 1)
            if (name := replica_name(service, k)) not in self.procs
        ]
        for p in new:
            p.wait_ready(60)
        return self.replicas(service)

    def replicas(self, service: str) -> list[ServiceProcess]:
        """The running replicas of ``service`` in order (the first is ``procs[service]``)."""
        out = []
        k = 1
        while (name := replica_name(service, k)) in self.procs:
            out.append(self.procs[name])
            k += 1
        return out

    def _spawn(self, service: str, name: str) -> ServiceProcess:
        module, _ = SERVICES[service]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        p = ServiceProcess(
            name,
            module,
            free_port(),
            {**self.base_env, "LINGUA_INSTANCE_ID": f"{name}-{self.cell}"},
            self.log_dir / f"{self.tag}-{name}.log",
        )
        p.start()
        self.procs[name] = p
        return p

    @property
    def gateway_ws(self) -> str:
        return f"ws://127.0.0.1:{self.procs['gateway'].port}"

    @property
    def gateway_wss(self) -> list[str]:
        """Every gateway replica's WebSocket base URL, first one first."""
        return [f"ws://127.0.0.1:{p.port}" for p in self.replicas("gateway")]

    def pids(self) -> dict[str, list[int]]:
        """Service PIDs (a service's replicas under its plain name), plus Redis and RabbitMQ
        (shared with the rest of the machine)."""
        out: dict[str, list[int]] = {}
        for name, p in self.procs.items():
            if p.proc is not None:
                out.setdefault(service_of(name), []).append(p.proc.pid)
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


def replica_name(service: str, k: int) -> str:
    """``gateway`` for the first replica, ``gateway-2`` for the second, ..."""
    return service if k == 1 else f"{service}-{k}"


def service_of(name: str) -> str:
    """The service a process name in ``procs`` runs (``gateway-2`` -> ``gateway``)."""
    base, sep, k = name.rpartition("-")
    return base if sep and k.isdigit() and base in SERVICES else name


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
