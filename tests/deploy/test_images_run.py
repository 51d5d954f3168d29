"""The images, built and run (podman or docker; ``scripts/images.py`` builds them, on local
Debian bases where no registry answers): each service starts within a few seconds against
the real Redis and RabbitMQ, its own health check passes inside it, it runs as UID 10001,
SIGTERM drains it and it exits 0; the node agent likewise against them; and each image
holds its own package, the shared one and (services) ``lua/``, nothing else of ours.

Costs about 30 s once the images are built (a first build here: about 2 min with the
local bases already in storage; see docs/operations.md, "Images").
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from lingua_shared.devstack import free_port
from tests.deploy.containers import (
    REPO,
    build_all,
    engine_or_skip,
    health,
    http_ok,
    images,
    inspect,
    process_users,
    remove,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.timeout(900)]

START_BOUND_S = 15.0  # "within a few seconds": generous, 2 shared cores; measured ~2-4 s
SERVICES = ("gateway", "node-manager", "dispatcher", "stats")
UID = "10001"
NON_ROOT = {"lingua", UID}  # the images' user, by name (their /etc/passwd) or number

# What an image may hold of ours, besides third-party dependencies in /opt/venv:
# /app/lua/* (services) or /app/healthcheck.py (node agent), and these workspace packages.
OWN = {
    "gateway": ("services/gateway", "lingua_gateway"),
    "node-manager": ("services/node-manager", "lingua_node_manager"),
    "dispatcher": ("services/dispatcher", "lingua_dispatcher"),
    "stats": ("services/stats", "lingua_stats"),
    "node-agent": ("sdk/node-agent", "lingua_node_agent"),
}
WORKSPACE_MODULES = {
    "lingua_shared",
    "lingua_gateway",
    "lingua_node_manager",
    "lingua_dispatcher",
    "lingua_stats",
    "lingua_node_agent",
    "lingua_client",
    "lingua_bench",
}

# Run inside an image: the files under /app, the files of each lingua_* package in the
# venv (no __pycache__), and whether sources, tests or uv came along.
LISTING = r"""
import json, os, site, pathlib
sp = pathlib.Path(site.getsitepackages()[0])
def files(root):
    root = pathlib.Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
print(json.dumps({
    "app": files("/app"),
    "packages": {p.name: files(p) for p in sp.iterdir() if p.name.startswith("lingua_")},
    "strays": [p for p in ("/src", "/usr/local/bin/uv", "/opt/venv/bin/uv", "/app/tests")
               if os.path.exists(p)],
    "site": str(sp),
}))
"""


def repo_files(root: Path) -> list[str]:
    """The files of a source directory as the build context has them (the working tree,
    without what .dockerignore drops: caches and compiled files)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


@pytest.fixture(scope="module")
def engine():
    eng = engine_or_skip()
    build_all(eng, local_bases=False)
    return eng


@pytest.mark.parametrize("name", [*SERVICES, "node-agent"])
def test_image_holds_only_its_package_shared_and_lua(engine, name: str) -> None:
    tag = f"lingua/{name}:{images.VERSION}"
    r = engine.run("run", "--rm", "--network", "none", "--entrypoint", "python", tag,
                   "-c", LISTING)  # fmt: skip
    got = json.loads(r.stdout)
    src_dir, module = OWN[name]
    # /app: the Redis scripts exactly as in the repository (services), or the agent's check
    expected_app = (
        ["healthcheck.py"]
        if name == "node-agent"
        else [f"lua/{f}" for f in repo_files(REPO / "lua")]
    )
    assert got["app"] == expected_app
    # of our packages: its own and lingua_shared, each exactly the repository's files
    ours = {p for p in got["packages"] if p in WORKSPACE_MODULES}
    assert ours == {module, "lingua_shared"}, ours
    for pkg, src in ((module, REPO / src_dir / "src" / module),
                     ("lingua_shared", REPO / "shared" / "src" / "lingua_shared")):  # fmt: skip
        assert got["packages"][pkg] == repo_files(src), pkg
    assert got["strays"] == []
    # the process runs as the image's numeric non-root user
    assert inspect(engine, tag, "{{.Config.User}}") == f"{UID}:{UID}"


def _run_service(engine, name: str, cname: str, env: dict[str, str], port: int) -> None:
    args = ["run", "-d", "--name", cname, "--network", "host", "-e", f"LINGUA_PORT={port}"]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    engine.run(*args, f"lingua/{name}:{images.VERSION}")


def _sigterm_exit_code(engine, cname: str, timeout: float = 40) -> int:
    engine.run("kill", "--signal", "TERM", cname)
    r = engine.run("wait", cname, timeout=timeout)
    return int(r.stdout.strip().splitlines()[-1])


def test_services_start_pass_their_healthcheck_and_drain_on_sigterm(engine, stack_env) -> None:
    """All four services and a node agent on the host network (the real Redis and
    RabbitMQ of the test run); start-up timed to /healthz; each image's HEALTHCHECK run
    inside it; every process as UID 10001; SIGTERM: exit 0."""
    run = uuid.uuid4().hex[:8]
    env = {**stack_env, "LINGUA_CELL": f"img-{run}", "LINGUA_DRAIN_TIMEOUT_S": "5"}
    ports = {name: free_port() for name in SERVICES}
    names = {name: f"lingua-imgtest-{name}-{run}" for name in [*SERVICES, "node-agent"]}
    started: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        for name in SERVICES:
            _run_service(engine, name, names[name], env, ports[name])
        waiting = set(SERVICES)
        while waiting and time.monotonic() - t0 < 60:
            for name in list(waiting):
                if http_ok(f"http://127.0.0.1:{ports[name]}/healthz"):
                    started[name] = round(time.monotonic() - t0, 1)
                    waiting.discard(name)
            time.sleep(0.1)
        assert not waiting, {n: engine.run("logs", names[n], check=False).stderr[-2000:]
                             for n in waiting}  # fmt: skip
        print(f"\nstarted to /healthz (4 started at once): {started}")
        assert all(s < START_BOUND_S for s in started.values()), started

        gw = f"ws://127.0.0.1:{ports['gateway']}/ws/node"
        engine.run("run", "-d", "--name", names["node-agent"], "--network", "host",
                   f"lingua/node-agent:{images.VERSION}",
                   "simulate", "--count", "2", "--gateway", gw)  # fmt: skip
        agent_s = wait_healthy(engine, [names["node-agent"]], 30)
        print(f"node agent healthy (connected) after {agent_s}")
        for name in SERVICES:
            assert health(engine, names[name]), f"{name}: its HEALTHCHECK fails inside it"
        for name, cname in names.items():
            users = process_users(engine, cname)
            assert users and all(u in NON_ROOT for u, _ in users), (name, users)

        # the agent first (it drains against a live gateway), then the services
        codes = {"node-agent": _sigterm_exit_code(engine, names["node-agent"])}
        for name in SERVICES:
            codes[name] = _sigterm_exit_code(engine, names[name])
        assert codes == {name: 0 for name in names}, codes
    finally:
        remove(engine, *names.values())
