"""What the tests that build and run the images share: the engine (podman or docker, as
``scripts/images.py`` finds it, podman installed where it is missing and the machine
allows), the images built once per session (cached layers on every later run), and small
helpers around ``podman run`` / ``inspect`` / ``healthcheck run``.

A machine where no engine can run (no podman and no root to install it, no Docker daemon)
skips these tests, saying why.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_images() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_lingua_images", REPO / "scripts" / "images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


images = _load_images()


def engine_or_skip():
    """The engine, or a skip naming what is missing."""
    try:
        return images.Engine(images.find_engine(install=True))
    except images.EngineError as exc:
        pytest.skip(str(exc))


def build_all(engine, local_bases: bool) -> dict[str, object]:
    """Every image (and the local bases when asked or when no registry answers); what was
    built, as ``scripts/images.py`` reports it."""
    bases = "local" if local_bases else images.choose_bases(engine, "auto")
    if bases == "local":
        if engine.name != "podman" and not images.can_install():
            pytest.skip("the local base images need debootstrap (root)")
        try:
            base_built = images.build_bases(engine)
        except images.EngineError as exc:
            pytest.skip(str(exc))
    else:
        base_built = []
    built = images.build_images(engine, bases)
    return {"bases": bases, "base_images": base_built, "images": built}


def inspect(engine, what: str, fmt: str) -> str:
    return engine.run("inspect", "--format", fmt, what).stdout.strip()


def health(engine, container: str) -> bool:
    """Run the container's own health check once (podman without systemd runs none by
    itself); True when it passed."""
    if engine.name == "podman":
        return engine.run("healthcheck", "run", container, check=False).returncode == 0
    status = inspect(engine, container, "{{.State.Health.Status}}")
    return status == "healthy"


def wait_healthy(engine, containers: list[str], timeout: float) -> dict[str, float]:
    """Seconds until each container's health check passed (from now)."""
    t0 = time.monotonic()
    left = list(containers)
    took: dict[str, float] = {}
    while left and time.monotonic() - t0 < timeout:
        for c in list(left):
            if health(engine, c):
                took[c] = round(time.monotonic() - t0, 1)
                left.remove(c)
        if left:
            time.sleep(0.5)
    if left:
        logs = {c: engine.run("logs", "--tail", "30", c, check=False).stdout for c in left}
        raise AssertionError(f"not healthy within {timeout:.0f}s: {left}\n{json.dumps(logs)}")
    return took


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def remove(engine, *names: str) -> None:
    if names:
        engine.run("rm", "-f", "-t", "0", *names, check=False)


def process_users(engine, container: str) -> list[tuple[str, str]]:
    """(user, command) of every process in the container, as the host sees them."""
    fields = ["user", "args"] if engine.name == "podman" else ["-o", "user,args"]
    out = engine.run("top", container, *fields).stdout.splitlines()[1:]
    return [tuple(line.split(None, 1)) for line in out if line.strip()]  # type: ignore[misc]


def run_subprocess(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert r.returncode == 0, f"{cmd}: {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout
