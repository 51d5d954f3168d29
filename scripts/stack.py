"""``make up`` / ``make down`` / ``make status``: the whole stack in the background, by PID.

    python scripts/stack.py up [--nodes N]   start the services (and N simulated nodes), wait
                                             until every service answers /readyz, print URLs
    python scripts/stack.py down             stop what `up` started (SIGTERM, then SIGKILL)
    python scripts/stack.py status           what is running
    python scripts/stack.py restart [SERVICE]
                                             restart one service (default: gateway)

``restart gateway`` never refuses a connection: the new gateway starts on the SAME port
(gateways listen with SO_REUSEPORT), and only once it listens and answers /readyz is the old
one sent SIGTERM; its drain closes its listening socket first (from then on the new process
takes every new connection), closes its node sockets with 1012 and exits. The other
services serve only HTTP (health, metrics, stats) on a port without SO_REUSEPORT, so a second
process could not bind it: they are stopped (drained), then started again; their queues
keep what arrives in between.

State lives in ``.run/`` (``--run-dir``: PID files and logs). Settings come from
``LINGUA_*`` as usual; ``LINGUA_<SERVICE>_PORT`` (``LINGUA_GATEWAY_PORT``...) moves a
service off its default port.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lingua_shared.devstack import SERVICES, ServiceProcess, stop_pid

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".run"
LOGS = RUN / "logs"
PIDS = RUN / "pids"
READY_TIMEOUT_S = 60.0
# A gateway drains for up to LINGUA_DRAIN_TIMEOUT_S (10 s) for its sessions, then closes
# Redis and RabbitMQ (bounded steps): SIGKILL only well after that.
STOP_TIMEOUT_S = 40.0


def _use_run_dir(run: Path) -> None:
    global RUN, LOGS, PIDS
    RUN, LOGS, PIDS = run, run / "logs", run / "pids"


def _port(name: str) -> int:
    """The service's port: ``LINGUA_<NAME>_PORT`` or its default."""
    return int(os.environ.get(f"LINGUA_{name.upper().replace('-', '_')}_PORT", SERVICES[name][1]))


def _service(name: str, **env: str) -> ServiceProcess:
    module, _ = SERVICES[name]
    return ServiceProcess(name, module, _port(name), dict(env), log_path=LOGS / f"{name}.log")


def _log_tail(p: ServiceProcess, lines: int = 15) -> None:
    if p.log_path and p.log_path.exists():
        print(f"--- last lines of {p.log_path} ---", file=sys.stderr)
        print("\n".join(p.log_path.read_text().splitlines()[-lines:]), file=sys.stderr)


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
    for name in SERVICES:
        if _running(name):
            print(f"  {name:13} already running (pid {_running(name)})")
            continue
        p = _service(name)
        p.start()
        assert p.proc is not None
        _pidfile(name).write_text(str(p.proc.pid))
        started.append(p)
    for p in started:
        try:
            p.wait_ready(READY_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            _log_tail(p)
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
                f"ws://127.0.0.1:{_port('gateway')}/ws/node",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _pidfile("nodes").write_text(str(proc.pid))
    gw, st = _port("gateway"), _port("stats")
    print("Lingua scheduler is up:")
    print(f"  gateway       ws://127.0.0.1:{gw}/ws/node   ws://127.0.0.1:{gw}/ws/session")
    for name in SERVICES:
        print(f"  {name:13} http://127.0.0.1:{_port(name)}/readyz   /metrics")
    print(f"  pools (live)  http://127.0.0.1:{st}/api/v1/pools   nodes: /api/v1/nodes")
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


def wait_serving(p: ServiceProcess, timeout: float) -> None:
    """Until ``p`` listens on its port itself and /readyz answers 200 there (see
    ``ServiceProcess.listening``)."""
    try:
        p.wait_ready(timeout, own_socket=True)
    except RuntimeError:
        raise
    except TimeoutError:
        raise TimeoutError(f"{p.name} not serving after {timeout:.0f}s; see {p.log_path}") from None


def _restart_gateway() -> int:
    """New process on the same port first, then the old one drains: no refusal window."""
    name = "gateway"
    old = _running(name)
    env = {}
    if os.environ.get("LINGUA_INSTANCE_ID"):
        # the instance id names the gateway's exclusive delivery queue: two processes
        # cannot share one
        env["LINGUA_INSTANCE_ID"] = f"{os.environ['LINGUA_INSTANCE_ID']}-{uuid.uuid4().hex[:6]}"
    new = _service(name, **env)
    t0 = time.monotonic()
    new.start()
    assert new.proc is not None
    try:
        wait_serving(new, READY_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        print(
            f"error: the new {name} did not come up, the old one keeps serving: {exc}",
            file=sys.stderr,
        )
        _log_tail(new)
        new.stop()
        return 1
    _pidfile(name).write_text(str(new.proc.pid))
    ready = time.monotonic() - t0
    print(f"  {name:13} new pid {new.proc.pid} serving on :{new.port} after {ready:.2f} s")
    if old:
        t1 = time.monotonic()
        stop_pid(old, STOP_TIMEOUT_S)
        print(f"  {name:13} old pid {old} drained and gone after {time.monotonic() - t1:.2f} s")
    return 0


def _restart_stopping_first(name: str) -> int:
    """Stop (drain), then start: the HTTP port has no SO_REUSEPORT, so a second process
    could not bind it while the first runs."""
    old = _running(name)
    t0 = time.monotonic()
    if old:
        stop_pid(old, STOP_TIMEOUT_S)
        _pidfile(name).unlink(missing_ok=True)
        print(f"  {name:13} stopped pid {old} after {time.monotonic() - t0:.2f} s")
    p = _service(name)
    p.start()
    assert p.proc is not None
    _pidfile(name).write_text(str(p.proc.pid))
    try:
        p.wait_ready(READY_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        _log_tail(p)
        p.stop()
        _pidfile(name).unlink(missing_ok=True)
        return 1
    print(f"  {name:13} new pid {p.proc.pid} ready after {time.monotonic() - t0:.2f} s")
    return 0


def restart(name: str, stop_first: bool = False) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    if name == "gateway" and not stop_first:
        return _restart_gateway()
    return _restart_stopping_first(name)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", type=Path, default=RUN, help="PID files and logs (.run/)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("--nodes", type=int, default=0, help="simulated nodes to start as well")
    sub.add_parser("down")
    sub.add_parser("status")
    r = sub.add_parser("restart")
    r.add_argument("service", nargs="?", default="gateway", choices=list(SERVICES))
    r.add_argument(
        "--stop-first",
        action="store_true",
        help="stop, then start, even a gateway (only to measure the window this avoids)",
    )
    args = ap.parse_args()
    _use_run_dir(args.run_dir.resolve())
    if args.cmd == "restart":
        return restart(args.service, args.stop_first)
    if args.cmd == "up":
        return up(args.nodes)
    if args.cmd == "down":
        return down()
    return status()


if __name__ == "__main__":
    sys.exit(main())
