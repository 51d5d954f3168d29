"""The services as real processes against real Redis and RabbitMQ.

Timings are shortened (heartbeats every 200 ms, TTL 1 s, sweeps every 200 ms) so that the
whole node lifecycle runs in seconds; the code paths are the production ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lingua_shared.devstack import SERVICES, ServiceProcess, free_port
from lingua_shared.keys import Keys

CELL = "it"

# Every stack's settings but where Redis and RabbitMQ are (the ``stack_env`` fixture adds
# those, the fault suite its own servers).
STACK_ENV = {
    "LINGUA_CELL": CELL,
    "LINGUA_SWEEP_INTERVAL_S": "0.2",
    "LINGUA_RECONCILE_INTERVAL_S": "0.5",
    "LINGUA_NODE_MIN_TTL_MS": "1000",
    "LINGUA_NODE_TTL_INTERVALS": "3",
    "LINGUA_HEARTBEAT_BATCH_MS": "50",
    "LINGUA_GATEWAY_LIVENESS_TTL_MS": "1500",
    "LINGUA_WS_PING_INTERVAL_S": "0.5",
    "LINGUA_WS_PING_TIMEOUT_S": "0.5",
    "LINGUA_WS_MAX_FRAME_BYTES": "65536",
    # the suites check that activity refreshes a session record within a second
    "LINGUA_SESSION_TOUCH_INTERVAL_S": "1",
    "LINGUA_LOG_LEVEL": "INFO",
}

# The job path's timers, short: ack 1 s, job deadline 3 s, gap 4 s.
JOB_ENV = {
    "LINGUA_ACK_TIMEOUT_MS": "1000",
    "LINGUA_JOB_DEADLINE_MS": "3000",
    "LINGUA_GAP_TIMEOUT_MS": "4000",
    "LINGUA_NO_NODE_WAIT_MS": "300",
    "LINGUA_MAX_ATTEMPTS": "3",
}

# The job path with every service replicated: nodes connect to gw-a, clients to gw-b.
JOB_SERVICES = (
    ("nm-1", "node-manager"),
    ("disp-1", "dispatcher"),
    ("disp-2", "dispatcher"),
    ("gw-a", "gateway"),
    ("gw-b", "gateway"),
)


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    keys: Keys = field(default_factory=lambda: Keys(CELL))
    procs: dict[str, ServiceProcess] = field(default_factory=dict)

    def start(self, name: str, service: str, port: int | None = None, **env: str) -> ServiceProcess:
        """Start ``service`` as process ``name``; ``port`` chosen in advance (a replica whose
        URL clients must know before it exists) or a free one."""
        module, _ = SERVICES[service]
        p = ServiceProcess(
            name,
            module,
            port or free_port(),
            {**self.env, **env, "LINGUA_INSTANCE_ID": name},
            self.log_dir / f"{name}.log",
        )
        p.start()
        self.procs[name] = p
        return p

    def gateway_url(self, name: str = "gw-a") -> str:
        return f"ws://127.0.0.1:{self.procs[name].port}/ws/node"

    def stop_all(self) -> dict[str, int | None]:
        return {name: p.stop() for name, p in reversed(self.procs.items())}

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n" + "\n".join(p.log_path.read_text().splitlines()[-30:])
            for p in self.procs.values()
            if p.log_path and p.log_path.exists()
        )


@contextlib.contextmanager
def started_stack(
    env: dict[str, str],
    log_dir: Path,
    request: pytest.FixtureRequest,
    services: Sequence[tuple[str, str]] = (),
    killed_ok: bool = False,
) -> Iterator[Stack]:
    """A stack with ``services`` ((name, service) pairs) started and ready; at the end every
    process is SIGTERMed and must exit 0 (``killed_ok``: a process the test already killed
    is not asked to), and the logs are printed when the test failed (the report hook of
    ``tests.support.fixtures`` says so)."""
    s = Stack(env, log_dir)
    try:
        procs = [s.start(name, service) for name, service in services]
        for p in procs:
            p.wait_ready()
        yield s
    finally:
        gone = {
            n
            for n, p in s.procs.items()
            if killed_ok and p.proc is not None and p.proc.poll() is not None
        }
        codes = s.stop_all()
        if getattr(request.node, "rep_call_failed", False):
            print(s.logs())
        bad = {n: c for n, c in codes.items() if n not in gone and c not in (0, None)}
        assert not bad, f"services did not exit cleanly on SIGTERM: {bad}\n{s.logs()}"


def start_all(
    stack: Stack, *specs: tuple[str, str] | tuple[str, str, int], timeout: float = 60.0, **env: str
) -> None:
    """Start several services at once ((name, service) or (name, service, port)) and wait
    until each is ready."""
    procs = [stack.start(*spec, **env) for spec in specs]
    for p in procs:
        p.wait_ready(timeout)


async def wait_ready(proc: ServiceProcess, timeout: float = 30.0) -> float:
    """Seconds until ``/readyz`` answers 200 (the service consumes again)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await asyncio.to_thread(proc.ready):
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise AssertionError(f"{proc.name} not ready within {timeout}s")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
