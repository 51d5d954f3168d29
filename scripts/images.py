"""``make images``: build every service image and the node-agent image, with podman or docker
(whichever works here), and report each image's size and build time.

    python3 scripts/images.py                  # the five images (bases: --bases auto)
    python3 scripts/images.py --bases local    # on local Debian bases, no registry needed
    python3 scripts/images.py --only gateway --json
    python3 scripts/images.py bases            # only the local base images (compose offline)

Base images. The Dockerfiles take them as build args (``PYTHON_IMAGE``, ``UV_IMAGE``) whose
defaults are the official images. ``--bases auto`` (the default) uses those when they are in
local storage already or a registry answers, and otherwise builds local equivalents from
Debian packages (``--bases local``): a ``debootstrap --variant=minbase bookworm`` rootfs
imported as ``localhost/lingua-offline/debian:bookworm``, then, from ``deploy/images/``,
Python 3.11 (Debian's), uv (its PyPI wheel, sha256 checked) and the Redis, RabbitMQ and
HAProxy images that ``deploy/compose/offline.yml`` puts in docker-compose.yml. Every one of
them stays in the engine's storage: a second run builds nothing again (the debootstrap is
skipped while its image exists; the rest are cached layers).

Engine. ``LINGUA_IMAGE_ENGINE`` (podman or docker) or the first of podman, docker whose
``info`` works; when neither is installed and this is a root Debian machine, podman (with
runc) is installed with apt-get. For podman, a ``containers.conf`` is written to
``.run/images/containers.conf`` (runc, cgroupfs when systemd is not running, ``nofile`` at
most the host's hard limit) and passed as ``CONTAINERS_CONF`` unless one is set.

Standard library only: it runs with the system ``python3`` as well as the project's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASES_DIR = REPO / "deploy" / "images"
RUN_DIR = REPO / ".run" / "images"
REPORT = RUN_DIR / "report.json"
VERSION = "0.1.0"
LOCAL = "localhost/lingua-offline"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("LINGUA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
REGISTRY_PROBES = ("https://registry-1.docker.io/v2/", "https://ghcr.io/v2/")


@dataclass(frozen=True)
class Target:
    """One image of ours: its tag, Dockerfile and build args (as docker-compose.yml has them)."""

    name: str
    dockerfile: str
    args: tuple[tuple[str, str], ...] = ()

    @property
    def tag(self) -> str:
        return f"lingua/{self.name}:{VERSION}"


TARGETS = (
    Target("gateway", "services/Dockerfile", (("SERVICE", "gateway"), ("PORT", "5010"))),
    Target("node-manager", "services/Dockerfile", (("SERVICE", "node-manager"), ("PORT", "5020"))),
    Target("dispatcher", "services/Dockerfile", (("SERVICE", "dispatcher"), ("PORT", "5030"))),
    Target("stats", "services/Dockerfile", (("SERVICE", "stats"), ("PORT", "5040"))),
    Target("node-agent", "sdk/node-agent/Dockerfile"),
)


def default_arg(name: str, dockerfile: str = "services/Dockerfile") -> str:
    """The default of a global ``ARG name=...`` of a Dockerfile (the official base image)."""
    m = re.search(rf"^ARG {name}=(\S+)\s*$", (REPO / dockerfile).read_text(), re.M)
    if m is None:
        raise SystemExit(f"{dockerfile}: no `ARG {name}=...`")
    return m.group(1)


def uv_version() -> str:
    return default_arg("UV_IMAGE").rpartition(":")[2]


def local_bases() -> dict[str, str]:
    """The local equivalents of the official base images, by role."""
    return {
        "debian": f"{LOCAL}/debian:{DEBIAN_SUITE}",
        "python": f"{LOCAL}/python:3.11-{DEBIAN_SUITE}",
        "uv": f"{LOCAL}/uv:{uv_version()}",
        "redis": f"{LOCAL}/redis:{DEBIAN_SUITE}",
        "rabbitmq": f"{LOCAL}/rabbitmq:{DEBIAN_SUITE}",
        "haproxy": f"{LOCAL}/haproxy:{DEBIAN_SUITE}",
    }


# -- the engine -------------------------------------------------------------------------------
class EngineError(RuntimeError):
    """No container engine works here (the message says why and what to do)."""


def containers_conf() -> Path:
    """A containers.conf for podman on this machine: runc; cgroupfs unless systemd runs;
    the default ulimits no higher than the host's hard limits (podman refuses more)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 20000 if nofile == resource.RLIM_INFINITY else min(20000, nofile)
    nproc = 4096 if nproc == resource.RLIM_INFINITY else min(4096, nproc)
    lines = [
        "# Written by scripts/images.py for podman on this machine (CONTAINERS_CONF).",
        "[containers]",
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]',
        "[engine]",
    ]
    if shutil.which("runc"):
        lines.append('runtime = "runc"')
    if not Path("/run/systemd/system").is_dir():
        lines.append('cgroup_manager = "cgroupfs"')
        lines.append('events_logger = "file"')
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / "containers.conf"
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def engine_env(engine: str) -> dict[str, str]:
    env = dict(os.environ)
    if Path(engine).name == "podman" and "CONTAINERS_CONF" not in env:
        env["CONTAINERS_CONF"] = str(containers_conf())
    return env


def _works(engine: str) -> bool:
    try:
        r = subprocess.run(
            [engine, "info"], capture_output=True, timeout=60, env=engine_env(engine)
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(*packages: str) -> None:
    """Install Debian packages (root, apt-get); an update first when the install fails."""
    print(f"images: installing {' '.join(packages)} with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env, capture_output=True).returncode == 0:
        return
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise EngineError(f"apt-get install {' '.join(packages)} failed:\n{r.stderr[-2000:]}")


def find_engine(install: bool = True) -> str:
    """The engine to use: LINGUA_IMAGE_ENGINE, else podman or docker, whichever works."""
    wanted = os.environ.get("LINGUA_IMAGE_ENGINE")
    candidates = [wanted] if wanted else ["podman", "docker"]
    tried = []
    for name in candidates:
        path = shutil.which(name)
        if path and _works(path):
            return path
        tried.append(f"{name}: {'not installed' if not path else '`info` fails'}")
    if install and not wanted and shutil.which("podman") is None and can_install():
        apt_install(
            "podman", "runc", "uidmap", "slirp4netns", "aardvark-dns", "netavark", "iptables"
        )
        if _works("podman"):
            return shutil.which("podman") or "podman"
        tried.append("podman: installed, but `podman info` fails")
    raise EngineError(
        "no container engine works here ("
        + "; ".join(tried)
        + "): install podman (apt-get install podman runc) or start Docker"
    )


class Engine:
    def __init__(self, path: str) -> None:
        self.path = path
        self.name = Path(path).name
        self.env = engine_env(path)

    def run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        r = subprocess.run([self.path, *args], env=self.env, **kw)
        if check and r.returncode != 0:
            out = (r.stdout or "")[-3000:] + (r.stderr or "")[-3000:]
            raise RuntimeError(f"{self.name} {' '.join(args[:3])}... failed:\n{out}")
        return r

    def exists(self, image: str) -> bool:
        if self.name == "podman":
            return self.run("image", "exists", image, check=False).returncode == 0
        return self.run("image", "inspect", image, check=False).returncode == 0

    def size(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def build(self, tag: str, dockerfile: Path, context: Path, args: dict[str, str]) -> Built:
        cmd = ["build", "-t", tag, "-f", str(dockerfile)]
        for k, v in args.items():
            cmd += ["--build-arg", f"{k}={v}"]
        if self.name == "docker":
            cmd += ["--progress", "plain"]
        else:
            # podman writes OCI images by default, which have no HEALTHCHECK: the images'
            # health checks (and compose's default for them) would be dropped silently
            cmd += ["--format", "docker"]
        t0 = time.monotonic()
        r = self.run(*cmd, str(context), check=False, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, capture_output=False)  # fmt: skip
        seconds = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"building {tag} failed:\n{r.stdout[-5000:]}")
        steps, cached = _steps(r.stdout, self.name)
        return Built(tag, round(seconds, 1), self.size(tag), steps, cached)


@dataclass
class Built:
    image: str
    build_s: float
    size_bytes: int
    steps: int  # the build's instructions after FROM, every stage
    cached: int  # of which were reused from an earlier build

    @property
    def size_mb(self) -> float:
        return round(self.size_bytes / 1e6, 1)


def _steps(output: str, engine: str) -> tuple[int, int]:
    if engine == "podman":
        steps = len(re.findall(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: (?!FROM)", output, re.M))
        return steps, output.count("--> Using cache")
    steps = len(re.findall(r"^#\d+ \[[^\]]+\] (?!FROM|internal)", output, re.M))
    return steps, len(re.findall(r"^#\d+ CACHED", output, re.M))


# -- base images --------------------------------------------------------------------------
def registry_reachable(timeout: float = 5.0) -> bool:
    for url in REGISTRY_PROBES:
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # 401: it answers (a pull authenticates itself)
        except (OSError, ValueError):
            return False
    return True


def choose_bases(engine: Engine, mode: str) -> str:
    if mode != "auto":
        return mode
    official = [default_arg("PYTHON_IMAGE"), default_arg("UV_IMAGE")]
    if all(engine.exists(img) for img in official):
        return "official"
    return "official" if registry_reachable() else "local"


def debian_base(engine: Engine) -> Built:
    """The debootstrap rootfs as an image, imported once: kept in the engine's storage, it
    is reused as it is by every later run (reported as one cached step)."""
    tag = local_bases()["debian"]
    if engine.exists(tag):
        return Built(tag, 0.0, engine.size(tag), 1, 1)
    if shutil.which("debootstrap") is None:
        if not can_install():
            raise EngineError("debootstrap is missing: apt-get install debootstrap (as root)")
        apt_install("debootstrap")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lingua-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        r = subprocess.run(
            ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), DEBIAN_MIRROR],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                    "usr/share/man", "usr/share/info", "var/log"):  # fmt: skip
            for child in (root / sub).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [engine.path, "import", "--change", 'CMD ["bash"]', "-", tag],
            stdin=tar.stdout,
            env=engine.env,
            capture_output=True,
            text=True,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"importing the rootfs failed:\n{imported.stderr[-2000:]}")
    return Built(tag, round(time.monotonic() - t0, 1), engine.size(tag), 1, 0)


def base_context() -> Path:
    """deploy/images/ with ``local-ca/``: this machine's own CA certificates (Debian keeps
    them in /usr/local/share/ca-certificates; a TLS-inspecting proxy's CA is one), which the
    local Python base trusts so that its builds reach PyPI wherever this machine does."""
    context = RUN_DIR / "context"
    if context.exists():
        shutil.rmtree(context)
    shutil.copytree(BASES_DIR, context)
    (context / "local-ca").mkdir()
    host_ca = Path("/usr/local/share/ca-certificates")
    for crt in sorted(host_ca.rglob("*.crt")) if host_ca.is_dir() else []:
        shutil.copyfile(crt, context / "local-ca" / crt.name)
    return context


def build_bases(engine: Engine, roles: tuple[str, ...] | None = None) -> list[Built]:
    """The local base images (debian, python, uv; redis, rabbitmq, haproxy for compose)."""
    bases = local_bases()
    context = base_context()
    out: list[Built] = []
    debian = debian_base(engine)
    out.append(debian)
    _print_row(debian)
    plan = [
        ("python", {"DEBIAN_IMAGE": bases["debian"]}),
        ("uv", {"PYTHON_IMAGE": bases["python"], "UV_VERSION": uv_version()}),
        ("redis", {"DEBIAN_IMAGE": bases["debian"]}),
        ("rabbitmq", {"DEBIAN_IMAGE": bases["debian"]}),
        ("haproxy", {"DEBIAN_IMAGE": bases["debian"]}),
    ]
    for role, args in plan:
        if roles is not None and role not in roles:
            continue
        built = engine.build(bases[role], context / f"{role}.Dockerfile", context, args)
        out.append(built)
        _print_row(built)
    return out


def base_args(bases: str) -> dict[str, str]:
    if bases == "official":
        return {}
    local = local_bases()
    return {"PYTHON_IMAGE": local["python"], "UV_IMAGE": local["uv"]}


# -- the report --------------------------------------------------------------------------
def _print_row(b: Built) -> None:
    reused = f"{b.cached}/{b.steps} steps cached"
    print(f"  {b.image:<48} {b.size_mb:>8.1f} MB {b.build_s:>8.1f} s   {reused}", flush=True)


def build_images(engine: Engine, bases: str, only: set[str] | None = None) -> list[Built]:
    args = base_args(bases)
    out = []
    for target in TARGETS:
        if only and target.name not in only:
            continue
        built = engine.build(
            target.tag, REPO / target.dockerfile, REPO, {**dict(target.args), **args}
        )
        out.append(built)
        _print_row(built)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("images", "bases"), default="images")
    parser.add_argument("--bases", choices=("auto", "official", "local"), default="auto")
    parser.add_argument("--only", help="comma-separated: " + ",".join(t.name for t in TARGETS))
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    ns = parser.parse_args(argv)
    only = set(ns.only.split(",")) if ns.only else None
    unknown = (only or set()) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown images: {sorted(unknown)}")
    try:
        engine = Engine(find_engine())
    except EngineError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    bases = "local" if ns.what == "bases" else choose_bases(engine, ns.bases)
    print(f"images: {engine.name}, {bases} base images", flush=True)
    base_built: list[Built] = []
    if bases == "local":
        base_built = build_bases(engine)
    built = [] if ns.what == "bases" else build_images(engine, bases, only)
    total = round(time.monotonic() - t0, 1)
    report = {
        "engine": engine.name,
        "engine_version": engine.run("--version").stdout.strip(),
        "bases": bases,
        "base_images": [asdict(b) for b in base_built],
        "images": [asdict(b) for b in built],
        "total_s": total,
    }
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"images: done in {total:.1f} s (report: {REPORT.relative_to(REPO)})")
    if ns.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
