"""Running ``python -m lingua_bench --quick`` from a test.

The bench starts the services and its load generators as child processes, each in a session
of its own. A run that overstays its timeout is stopped with every process it started, found
by walking its process tree before it is killed: a plain ``subprocess.run(timeout=...)``, or
killing its process group, stops only the bench and leaves the services running, writing to
Redis and holding ports and CPU for the rest of the suite (a test that watches Redis with
MONITOR then sees their commands)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lingua_bench._base_common import stop_tree

# a quick run takes ~20-40 s; a busy machine (CI beside other work) can take several times that
QUICK_BUDGET_S = 150
QUICK_TIMEOUT_S = QUICK_BUDGET_S + 20


def run_quick(tmp_path: Path, redis_url: str, amqp_url: str, *only: str) -> dict:
    env = {**os.environ, "LINGUA_BENCH_REDIS_URL": redis_url, "LINGUA_BENCH_AMQP_URL": amqp_url}
    cmd = [sys.executable, "-m", "lingua_bench", "--quick", "--no-progress",
           "--out-dir", str(tmp_path), "--budget-s", str(QUICK_BUDGET_S),
           *[f"--only={o}" for o in only]]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=QUICK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"the quick bench overstayed {QUICK_TIMEOUT_S} s:\n{out[-2000:]}{err[-3000:]}")
    finally:
        # anything of the run's group still alive (a child the bench failed to stop)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return json.loads((tmp_path / "latest.json").read_text())


@pytest.fixture
def quick_bench(redis_url: str, amqp_url: str, tmp_path: Path) -> Callable[..., dict]:
    """``quick_bench("dispatch", "heartbeats")``: the quick run's latest.json."""
    return lambda *only: run_quick(tmp_path, redis_url, amqp_url, *only)
