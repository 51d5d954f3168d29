"""docker-compose.yml, run for real with podman-compose: the images built by
``scripts/images.py`` on the local Debian bases, ``deploy/compose/offline.yml`` over the
file (those bases for Redis, RabbitMQ and HAProxy; only HAProxy published, on a free
127.0.0.1 port: the host's own Redis, RabbitMQ and test ports are left alone).

One test, in steps: every container healthy (its own health check); the demo's round trip
(``lingua-client stream``) through the HAProxy port, sessions and nodes spread over the two
gateway replicas; one gateway container restarted under a stream of utterances, none lost;
every service process running as the non-root user; everything torn down by the project's
name. Costs about 70 s here with the images in storage (a first build of the images and
bases adds about 2.5 min; docs/operations.md, "Images").

podman < 4.6 cannot wait for ``condition: service_healthy`` (podman-compose says so and
starts everything at once), and without systemd podman runs no health check by itself: the
test starts the services in the order of their ``depends_on`` and runs each container's
health check itself until it passes, as compose would.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lingua_shared.devstack import free_port
from tests.deploy.containers import (
    REPO,
    build_all,
    engine_or_skip,
    process_users,
    run_subprocess,
    wait_healthy,
)
from tests.integration.test_graceful_shutdown import FailoverClient

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.timeout(1200)]

PROJECT = "lingua-compose-test"
FILES = ["-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "deploy/compose/offline.yml")]
OURS = ("gateway", "node-manager", "dispatcher", "stats", "node-sim")
NON_ROOT = {"lingua", "10001"}
HEALTHY_BOUND_S = 180  # per start-up level; RabbitMQ's first boot is the slowest (~20 s)


def start_levels(compose: dict) -> list[list[str]]:
    """The services in the order their depends_on allows (each level after the last)."""
    deps = {name: set(svc.get("depends_on") or {}) for name, svc in compose["services"].items()}
    levels: list[list[str]] = []
    done: set[str] = set()
    while len(done) < len(deps):
        level = sorted(n for n, d in deps.items() if n not in done and d <= done)
        assert level, f"a depends_on cycle in {set(deps) - done}"
        levels.append(level)
        done |= set(level)
    return levels


def test_start_levels_follow_depends_on() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert start_levels(compose) == [
        ["rabbitmq", "redis"],
        ["dispatcher", "gateway", "node-manager", "stats"],
        ["lb"],
        ["node-sim"],
    ]


class Compose:
    def __init__(self, engine, port: int, workdir: Path) -> None:
        self.engine = engine
        self.env = dict(engine.env)
        exe = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
        # HAProxy on a free port: one more override (podman-compose does not expand
        # variables in an `!override` value)
        ports = workdir / "ports.yml"
        ports.write_text(f'services:\n  lb:\n    ports: !override ["127.0.0.1:{port}:5010"]\n')
        self.cmd = [exe or "podman-compose", "-p", PROJECT, *FILES, "-f", str(ports)]

    def __call__(self, *args: str, timeout: float = 300) -> str:
        return run_subprocess([*self.cmd, *args], self.env, timeout)

    def containers(self, service: str) -> list[str]:
        out = self.engine.run(
            "ps", "-a", "--format", "{{.Names}}",
            "--filter", f"label=io.podman.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout  # fmt: skip
        return sorted(out.split())

    def logs(self, container: str) -> str:
        r = self.engine.run("logs", container, check=False)
        return (r.stdout or "") + (r.stderr or "")

    def down(self) -> None:
        """Everything of the project, by its name: containers, network, volumes."""
        subprocess.run([*self.cmd, "down", "-v", "-t", "5"], env=self.env,
                       capture_output=True, timeout=300)  # fmt: skip
        left = self.engine.run(
            "ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={PROJECT}"
        ).stdout.split()
        if left:
            self.engine.run("rm", "-f", "-t", "0", *left, check=False)
        for vol in ("redis-data", "rabbitmq-data"):
            self.engine.run("volume", "rm", "-f", f"{PROJECT}_{vol}", check=False)
        self.engine.run("network", "rm", "-f", f"{PROJECT}_default", check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[Compose, int]]:
    engine = engine_or_skip()
    if engine.name != "podman":
        pytest.skip("this test runs docker-compose.yml with podman-compose (podman only)")
    build_all(engine, local_bases=True)
    port = free_port()
    compose = Compose(engine, port, tmp_path_factory.mktemp("compose"))
    compose.down()  # what a killed earlier run left
    try:
        yield compose, port
    finally:
        compose.down()


def _stream(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lingua_client", "stream", "--src", "zh", "--tgt", "en",
         "--url", f"ws://127.0.0.1:{port}/ws/session", "--timeout-s", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_the_compose_stack_runs(stack) -> None:
    compose, port = stack
    engine = compose.engine
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    timings: dict[str, float] = {}

    # 1. up, level by level; every container's own health check passes
    t0 = time.monotonic()
    for level in start_levels(spec):
        compose("up", "-d", "--no-build", *level)
        names = [c for svc in level for c in compose.containers(svc)]
        assert len(names) >= len(level), (level, names)
        wait_healthy(engine, names, HEALTHY_BOUND_S)
        timings["+".join(level)] = round(time.monotonic() - t0, 1)
    gateways = compose.containers("gateway")
    assert len(gateways) == 2, gateways
    print(f"\nhealthy (cumulative seconds per level): {timings}")

    # 2. the demo's round trip through HAProxy; the replicas share nodes and sessions
    clients = [_stream(port) for _ in range(3)]
    outputs = [c.communicate(timeout=90)[0] for c in clients]
    assert [c.returncode for c in clients] == [0, 0, 0], outputs
    opened = {gw: compose.logs(gw).count("gateway.session_opened") for gw in gateways}
    nodes = {gw: compose.logs(gw).count("gateway.node_registered") for gw in gateways}
    print(f"sessions per gateway: {opened}; node registrations per gateway: {nodes}")
    assert sum(opened.values()) == 3, opened
    assert all(nodes.values()), f"the simulated nodes are all on one replica: {nodes}"

    # 3. one gateway container restarted under a stream of utterances: none lost
    before = {gw: compose.logs(gw).count("gateway.session_opened") for gw in gateways}
    restarted, took, gateway = asyncio.run(_restart_under_stream(compose, port, before))
    got = restarted.utterances
    assert len(got) >= 20, len(got)
    assert [len(u.answers) for u in got] == [1] * len(got), [
        (u.n, len(u.answers)) for u in got if len(u.answers) != 1
    ]
    assert {u.answers[0]["type"] for u in got} == {"translation_result"}
    print(
        f"restart of {gateway} (the stream's) took {took:.1f}s: {len(got)} utterances, "
        f"{restarted.sessions} sessions, close codes {restarted.close_codes}, 0 lost"
    )
    assert restarted.close_codes == [1012], restarted.close_codes  # drained under it
    assert "gateway.drained" in compose.logs(gateway)
    wait_healthy(engine, gateways, HEALTHY_BOUND_S)

    # 4. every process of ours as the non-root user
    for svc in OURS:
        for name in compose.containers(svc):
            users = process_users(engine, name)
            assert users and all(u in NON_ROOT for u, _ in users), (name, users)


async def _restart_under_stream(compose: Compose, port: int, before: dict[str, int]):
    """Stream utterances through HAProxy; restart the gateway container the stream's
    session landed on (the one whose session count grew)."""
    client = FailoverClient([f"ws://127.0.0.1:{port}/ws/session"])
    streaming = asyncio.create_task(client.run())
    stop = asyncio.Event()

    async def feed() -> None:
        while not stop.is_set():
            client.add()
            await asyncio.sleep(0.08)

    feeder = asyncio.create_task(feed())
    await asyncio.sleep(2)
    (gateway,) = [
        gw for gw, n in before.items() if compose.logs(gw).count("gateway.session_opened") > n
    ]
    t0 = time.monotonic()
    # SIGTERM (the drain), up to stop_grace_period, then the same container again
    await asyncio.to_thread(compose.engine.run, "restart", "-t", "20", gateway)
    took = time.monotonic() - t0
    await asyncio.sleep(2)
    stop.set()
    await feeder
    deadline = time.monotonic() + 40
    while (client.unanswered() or client.pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    client.stop()
    await asyncio.wait_for(streaming, 10)
    return client, took, gateway
