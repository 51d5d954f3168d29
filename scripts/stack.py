"""``make up`` / ``make down`` / ``make status``: the whole stack in the background, by PID.

    python scripts/stack.py up [--nodes N]   start the services (and N simulated nodes), wait
                                             until every service answers /readyz, print URLs
    python scripts/stack.py down             stop what `up` started (SIGTERM, then SIGKILL)
    python scripts/stack.py status           what is running

State lives in ``.run/`` (PID files and logs). Settings come from ``LINGUA_*`` as usual.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from lingua_shared.devstack import SERVICES, ServiceProcess, stop_pid

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".run"
LOGS = RUN / "logs"
PIDS = RUN / "pids"


def _pidfile(name: str) -> Path:
    return PIDS / f"{name}.pid"


def _running(name: str) -> int | None:
    f = _pidfile(name)
    if not f.exists():
        return None
    pid = int(f.read_text())
    try:
        os.kill(pid, 0)
        return pid
    except ProcessLookupError:
        f.unlink()
        return None


def up(nodes: int) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    started: list[ServiceProcess] = []
    for name, (module, port) in SERVICES.items():
        if _running(name):
            print(f"  {name:13} already running (pid {_running(name)})")
            continue
        p = ServiceProcess(
            name,
            module,
            int(os.environ.get(f"LINGUA_{name.upper().replace('-', '_')}_PORT", port)),
            log_path=LOGS / f"{name}.log",
        )
        p.start()
        assert p.proc is not None
        _pidfile(name).write_text(str(p.proc.pid))
        started.append(p)
    for p in started:
        try:
            p.wait_ready(60)
        except (RuntimeError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            print(f"--- last lines of {p.log_path} ---", file=sys.stderr)
            print("\n".join(p.log_path.read_text().splitlines()[-15:]), file=sys.stderr)  # type: ignore[union-attr]
            down()
            return 1
    if nodes and not _running("nodes"):
        log = open(LOGS / "nodes.log", "ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lingua_node_agent",
                "simulate",
                "--count",
                str(nodes),
                "--gateway",
                "ws://127.0.0.1:5010/ws/node",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _pidfile("nodes").write_text(str(proc.pid))
    print("Lingua scheduler is up:")
    print("  gateway       ws://127.0.0.1:5010/ws/node   ws://127.0.0.1:5010/ws/session")
    for name, (_, port) in SERVICES.items():
        print(f"  {name:13} http://127.0.0.1:{port}/readyz   /metrics")
    print("  pools (live)  http://127.0.0.1:5040/api/v1/pools   nodes: /api/v1/nodes")
    print(f"  logs          {LOGS}/   stop with: make down")
    return 0


def down() -> int:
    for name in ["nodes", *reversed(list(SERVICES))]:
        pid = _running(name)
        if pid:
            stop_pid(pid)
            print(f"  stopped {name} (pid {pid})")
        _pidfile(name).unlink(missing_ok=True)
    return 0


def status() -> int:
    for name in [*SERVICES, "nodes"]:
        pid = _running(name)
        print(f"  {name:13} {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("--nodes", type=int, default=0, help="simulated nodes to start as well")
    sub.add_parser("down")
    sub.add_parser("status")
    args = ap.parse_args()
    if args.cmd == "up":
        return up(args.nodes)
    if args.cmd == "down":
        return down()
    return status()


if __name__ == "__main__":
    sys.exit(main())
