"""Integration fixtures: the services as real processes against the real Redis and RabbitMQ.

Timings are shortened (heartbeats every 200 ms, TTL 1 s, sweeps every 200 ms) so that the
whole node lifecycle runs in seconds; the code paths are the production ones.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lingua_shared.devstack import SERVICES, ServiceProcess, free_port
from lingua_shared.keys import Keys

CELL = "it"


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


@pytest.fixture
def stack_env(redis_url: str, amqp_url: str, bus_prefix: str) -> dict[str, str]:
    return {
        "LINGUA_REDIS_URL": redis_url,
        "LINGUA_AMQP_URL": amqp_url,
        "LINGUA_BUS_PREFIX": bus_prefix,
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
        "LINGUA_LOG_LEVEL": "INFO",
    }


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
    is not asked to), and the logs are printed when the test failed."""
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


@pytest.fixture
def stack(
    redis, stack_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """node-manager + one gateway (``gw-a``), ready. ``redis`` (flushed) comes first."""
    services = [("nm-1", "node-manager"), ("gw-a", "gateway")]
    with started_stack(stack_env, tmp_path, request, services) as s:
        yield s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call_failed = rep.failed  # type: ignore[attr-defined]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
