"""docker-compose.yml, read with PyYAML (and `docker compose config` when the plugin is
installed): every container is health-checked and started in order, built from our
Dockerfiles, and given every setting the code needs, with names the code reads."""

from __future__ import annotations

import importlib.util
import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.parsing import (
    IMAGES,
    REPO,
    SERVICE_REQUIRED_SETTINGS,
    image_dockerfile,
    image_pin_problem,
    node_agent_config,
    settings_default,
    settings_env_names,
)

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and data.get("services"), "no services"
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _image_of(svc: dict[str, Any]) -> tuple[str, str]:
    name, _, tag = svc["image"].rpartition(":")
    return name, tag


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The containers that run one of our images."""
    return {k: v for k, v in _services(compose).items() if _image_of(v)[0] in IMAGES}


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _effective_env(svc: dict[str, Any]) -> dict[str, str]:
    """The image's ENV overlaid with the compose environment: what the process sees."""
    image = IMAGES[_image_of(svc)[0]]
    return {**image_dockerfile(image).final.env(), **_env(svc)}


def _build_args(build: dict[str, Any]) -> dict[str, str]:
    args = build.get("args") or {}
    if isinstance(args, list):
        args = dict(item.split("=", 1) for item in args)
    return {k: str(v) for k, v in args.items()}


def _command(svc: dict[str, Any]) -> list[str]:
    command = svc.get("command")
    return command.split() if isinstance(command, str) else list(command or [])


def _published(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(host port, container port) of every published port."""
    out = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split(":")
        out.append((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return out


def test_every_container_is_health_checked(compose: dict[str, Any]) -> None:
    for name, svc in _services(compose).items():
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        test = check.get("test")
        assert test and test != ["NONE"], f"{name}: empty healthcheck"


def test_depends_on_waits_for_health(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on as a list waits for nothing"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
    # everything of ours waits for Redis and RabbitMQ, directly or through another service
    for name in _ours(compose):
        reach: set[str] = set()
        todo = [name]
        while todo:
            for dep in services[todo.pop()].get("depends_on") or {}:
                if dep not in reach:
                    reach.add(dep)
                    todo.append(dep)
        assert {"redis", "rabbitmq"} <= reach, f"{name} does not wait for redis and rabbitmq"


def test_builds_come_from_our_dockerfiles(compose: dict[str, Any]) -> None:
    ours = _ours(compose)
    assert {_image_of(s)[0] for s in ours.values()} == set(IMAGES), "an image is not run"
    for name, svc in ours.items():
        build = svc.get("build")
        assert build, f"{name}: no build section"
        context = (REPO / build["context"]).resolve()
        assert context == REPO, f"{name}: the context must be the repository root"
        dockerfile = (context / build["dockerfile"]).resolve()
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        image = IMAGES[_image_of(svc)[0]]
        assert dockerfile == REPO / image.dockerfile, f"{name}: image and Dockerfile disagree"
        # the build args name the image's service (services/Dockerfile serves all four)
        assert _build_args(build) == image.args, f"{name}: build args are not {image.name}'s"


def test_no_floating_tags(compose: dict[str, Any]) -> None:
    for name, svc in _services(compose).items():
        assert "image" in svc, f"{name}: no image (the tag would be made up by compose)"
        assert image_pin_problem(svc["image"]) is None, f"{name}: {svc['image']}"


def test_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    command = _command(_services(compose)["redis"])
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options.get("--appendonly") == "yes"
    assert options.get("--maxmemory-policy") == "noeviction"


def test_rabbitmq_is_a_pinned_3x_management_image(compose: dict[str, Any]) -> None:
    name, tag = _image_of(_services(compose)["rabbitmq"])
    assert name == "rabbitmq"
    assert re.fullmatch(r"3\.\d+\.\d+-management(-alpine)?", tag), tag


def test_every_required_setting_is_provided(compose: dict[str, Any]) -> None:
    """Each service gets Redis, RabbitMQ, a reachable listen address and its Lua scripts;
    every LINGUA_* name is one Settings reads; the URLs name the compose services and the
    broker user compose creates."""
    services = _services(compose)
    rabbit = _env(services["rabbitmq"])
    known = settings_env_names()
    for name, svc in _ours(compose).items():
        image = IMAGES[_image_of(svc)[0]]
        env = _effective_env(svc)
        unknown = {k for k in _env(svc) if k.startswith("LINGUA_")} - known
        assert not unknown, f"{name}: no setting reads {unknown}"
        if not image.service:
            continue
        missing = set(SERVICE_REQUIRED_SETTINGS) - set(env)
        assert not missing, f"{name}: {missing} not set"
        assert env["LINGUA_HOST"] == "0.0.0.0", f"{name}: unreachable from other containers"
        redis = urlsplit(env["LINGUA_REDIS_URL"])
        assert redis.scheme == "redis" and redis.hostname in services
        assert services[redis.hostname]["image"].startswith("redis:")
        amqp = urlsplit(env["LINGUA_AMQP_URL"])
        assert amqp.scheme == "amqp" and amqp.hostname in services
        assert services[amqp.hostname]["image"].startswith("rabbitmq:")
        assert (amqp.username, amqp.password) == (
            rabbit["RABBITMQ_DEFAULT_USER"],
            rabbit["RABBITMQ_DEFAULT_PASS"],
        ), f"{name}: the AMQP user is not the one RabbitMQ creates (guest is loopback-only)"


def test_health_checks_use_each_services_port(compose: dict[str, Any]) -> None:
    for name, svc in _ours(compose).items():
        image = IMAGES[_image_of(svc)[0]]
        if not image.service:
            continue
        port = _effective_env(svc).get("LINGUA_PORT")
        assert port, f"{name}: LINGUA_PORT not set"
        exposed = {
            w for ins in image_dockerfile(image).final.all("EXPOSE")
            for w in ins.args.split()
        }  # fmt: skip
        assert exposed == {port}
        test = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in test or f"127.0.0.1:{port}/healthz" in test


def test_gateway_has_two_replicas_behind_one_port(compose: dict[str, Any]) -> None:
    services = _services(compose)
    gateways = [k for k, v in _ours(compose).items() if _image_of(v)[0] == "lingua/gateway"]
    assert len(gateways) == 1
    gateway = services[gateways[0]]
    assert (gateway.get("deploy") or {}).get("replicas") == 2
    assert not gateway.get("ports"), "replicas cannot share a published host port"
    assert "container_name" not in gateway
    port = _env(gateway)["LINGUA_PORT"]
    publishers = [
        (name, svc) for name, svc in services.items() if any(p[0] == port for p in _published(svc))
    ]
    assert len(publishers) == 1, f"host port {port}: {[n for n, _ in publishers]}"
    _, lb = publishers[0]
    assert image_pin_problem(lb["image"]) is None
    assert gateways[0] in (lb.get("depends_on") or {})
    config = _mounted_config(lb)
    text = config.read_text()
    # HAProxy: a frontend on the published container port, servers resolving the gateway
    # service name (every replica), WebSocket tunnels allowed to live
    target = next(p[1] for p in _published(lb) if p[0] == port)
    assert re.search(rf"^\s*bind\s+\S*:{target}\b", text, re.M), "no frontend on the port"
    servers = re.findall(r"^\s*server(?:-template)?\s+.*?\b(\S+):(\d+)\b", text, re.M)
    assert (gateways[0], port) in servers, servers
    tunnel = re.search(r"^\s*timeout\s+tunnel\s+(\d+)(ms|s|m|h)?\s*$", text, re.M)
    assert tunnel, "no `timeout tunnel`: WebSockets would be cut at the server timeout"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}
    assert int(tunnel.group(1)) * scale[tunnel.group(2)] >= 3600
    assert "httpchk GET /readyz" in text, "a draining replica must leave the pool"


def _mounted_config(svc: dict[str, Any]) -> Path:
    for volume in svc.get("volumes") or []:
        source = str(volume).split(":")[0]
        path = (REPO / source).resolve()
        if path.is_file():
            assert path.is_relative_to(REPO / "deploy" / "compose")
            return path
    raise AssertionError("the load balancer mounts no config file from deploy/compose/")


def test_haproxy_config_is_valid_when_haproxy_is_installed(compose: dict[str, Any]) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy not installed: its own config check is not available here")
    lb = next(s for s in _services(compose).values() if s["image"].startswith("haproxy:"))
    result = subprocess.run(
        [haproxy, "-c", "-f", str(_mounted_config(lb))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _haproxy_section(text: str, header: str) -> list[str]:
    """The directives of one section (``backend gateways``), comments and blanks dropped."""
    lines: list[str] = []
    inside = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not raw[0].isspace():
            inside = line.split() == header.split()
        elif inside:
            lines.append(line)
    return lines


def _haproxy_seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(us|ms|s|m)?", value)
    assert m, value
    return int(m.group(1)) * {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60}[m.group(2)]


def test_restarting_one_gateway_refuses_nothing_through_haproxy(compose: dict[str, Any]) -> None:
    """A stopping gateway closes its listening socket first: HAProxy must retry what it
    refuses (or answers 503 while draining) on the other replica before any client sees
    it, and take the replica out within a couple of seconds (docs/operations.md,
    "Restarting a gateway without refusing connections")."""
    lb = next(s for s in _services(compose).values() if s["image"].startswith("haproxy:"))
    text = _mounted_config(lb).read_text()
    (name,) = re.findall(r"^backend\s+(\S+)\s*$", text, re.M)  # the gateways' backend
    body = _haproxy_section(text, f"backend {name}")
    words = {
        line.split()[0] + (" " + line.split()[1] if line.startswith("option") else ""): line.split()
        for line in body
    }

    assert "option httpchk GET /readyz" in body
    # every retry of a refused, reset or 503-answered handshake goes to another replica
    redispatch = words.get("option redispatch")
    assert redispatch is not None, "a refused connection must be retried on another replica"
    assert redispatch[2:] == ["1"], "redispatch on every retry (bare: only on the last one)"
    assert int(words["retries"][1]) >= 1
    retry_on = set(words["retry-on"][1:])
    assert {"conn-failure", "503"} <= retry_on, retry_on
    # health: a replica that stops is out within about 2 s (first failed check within
    # `inter`, the `fall - 1` next ones every `fastinter`)
    server = words["default-server"]
    assert "check" in server
    opts = dict(itertools.pairwise(server))
    inter = _haproxy_seconds(opts.get("inter", "2000"))
    fastinter = _haproxy_seconds(opts.get("fastinter", opts.get("inter", "2000")))
    assert inter + (int(opts.get("fall", "3")) - 1) * fastinter <= 2, opts


def test_gateway_stop_grace_covers_the_drain(compose: dict[str, Any]) -> None:
    gateway = next(v for v in _ours(compose).values() if _image_of(v)[0] == "lingua/gateway")
    drain = float(
        _env(gateway).get("LINGUA_DRAIN_TIMEOUT_S", settings_default("LINGUA_DRAIN_TIMEOUT_S"))
    )
    grace = gateway.get("stop_grace_period", "10s")
    m = re.fullmatch(r"(\d+)s", grace)
    assert m, grace
    assert int(m.group(1)) > drain


def test_simulated_nodes_run_the_simulator_through_the_balancer(compose: dict[str, Any]) -> None:
    services = _services(compose)
    sims = [v for v in _ours(compose).values() if _image_of(v)[0] == "lingua/node-agent"]
    assert sims, "no simulated nodes"
    for svc in sims:
        cfg = node_agent_config(_command(svc))
        assert type(cfg).__name__ == "SimConfig"
        url = urlsplit(cfg.gateway)  # type: ignore[attr-defined]
        assert url.scheme == "ws" and url.path == "/ws/node"
        # through the load balancer (so they spread over both replicas and move on drain)
        lb = services[url.hostname or ""]
        assert lb["image"].startswith("haproxy:")
        assert re.search(rf"^\s*bind\s+\S*:{url.port}\b", _mounted_config(lb).read_text(), re.M)
        assert url.hostname in (svc.get("depends_on") or {})
        assert cfg.id_prefix == "", "scaled containers must not share node ids"  # type: ignore[attr-defined]


def test_node_agent_image_default_command_is_valid() -> None:
    df = image_dockerfile(IMAGES["lingua/node-agent"])
    node_agent_config(df.final.all("CMD")[-1].words())


def test_node_agent_cli_check_rejects_bad_flags() -> None:
    with pytest.raises(SystemExit):
        node_agent_config(["simulate", "--count", "3", "--no-such-flag"])
    from lingua_node_agent.errors import ConfigError

    with pytest.raises(ConfigError):
        node_agent_config(["simulate", "--count", "0"])


def test_docker_compose_config_when_the_plugin_exists() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


# -- deploy/compose/offline.yml: the same stack without registry access --------------------
def _offline() -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    def tagged(tag: str):
        def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
            if isinstance(node, yaml.SequenceNode):
                return {tag: loader.construct_sequence(node)}
            return {tag: loader.construct_object(node)}

        return construct

    for tag in ("!reset", "!override"):
        Loader.add_constructor(tag, tagged(tag))
    return yaml.load((REPO / "deploy" / "compose" / "offline.yml").read_text(), Loader=Loader)


def test_offline_override_swaps_every_base_and_publishes_only_haproxy(
    compose: dict[str, Any],
) -> None:
    """Every image compose pulls gets a local one scripts/images.py builds, every image we
    build gets the local bases, and only HAProxy keeps a host port, on loopback."""
    spec = importlib.util.spec_from_file_location("_images_script2", REPO / "scripts/images.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    local = mod.local_bases()
    offline = _offline()["services"]
    for name, svc in _services(compose).items():
        over = offline.get(name, {})
        if "build" in svc:
            assert over["build"]["args"] == {
                "PYTHON_IMAGE": local["python"],
                "UV_IMAGE": local["uv"],
            }, name
        else:
            assert over.get("image") in local.values(), name
        if name == "lb":
            (published,) = over["ports"]["!override"]
            assert published.startswith("127.0.0.1:") and published.endswith(":5010")
        elif svc.get("ports"):
            assert over.get("ports") == {"!reset": []}, name
