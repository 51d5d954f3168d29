"""Start and stop the services as real processes: used by ``make up``/``make down`` and by
the integration tests, so both exercise the same way of running the stack.

Each service is ``python -m <module>`` with ``LINGUA_*`` settings in its environment; it is
ready when ``GET /readyz`` answers 200. PIDs go to a run directory so ``down`` stops exactly
what ``up`` started.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVICES: dict[str, tuple[str, int]] = {
    # name: (module, default port)
    "node-manager": ("lingua_node_manager", 5020),
    "dispatcher": ("lingua_dispatcher", 5030),
    "stats": ("lingua_stats", 5040),
    "gateway": ("lingua_gateway", 5010),
}


PORT_FLOOR = 20_000  # ports handed out start here (below: well-known and registered services)
_handed_out: set[int] = set()


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux; the IANA range elsewhere)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 49152, 65535


def free_port() -> int:
    """A port free to listen on, for a service started next.

    Not one of the kernel's ephemeral ports (``bind(0)`` picks from those): between this
    check and the service's own bind, any outgoing connection of the machine (to Redis, to
    RabbitMQ) may take an ephemeral port as its local port, and the service then fails with
    "address already in use". Ports below that range are only ever taken by a listener, and
    the check bind sees those. Random, and never the same one twice in a process."""
    lo = PORT_FLOOR
    hi = ephemeral_range()[0] - 1
    if hi - lo < 1_000:  # an unusual kernel setting: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(lo, hi)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found in {lo}..{hi}")


@dataclass
class ServiceProcess:
    name: str
    module: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **self.env, "LINGUA_PORT": str(self.port)}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.log_path:
            out.close()  # type: ignore[union-attr]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def listening(self) -> bool:
        """Whether this process itself holds a listening socket on its port.

        Gateways listen with SO_REUSEPORT: while an old gateway still listens on the same
        port, /readyz may be answered by either process, so a replacement is serving only
        once it holds a listening socket of its own (it opens it after Redis, RabbitMQ and
        its consumers are up, which is all /readyz checks)."""
        import psutil  # the node agent's dependency, in the workspace

        if self.proc is None:
            return False
        try:
            conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in conns
        )

    def wait_ready(self, timeout: float = 30.0, own_socket: bool = False) -> None:
        """Until /readyz answers 200; ``own_socket``: and this process listens on the port
        itself (a replacement beside a process that still listens there)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
                )
            if (not own_socket or self.listening()) and self.ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def stop_pid(pid: int, timeout: float = 15.0) -> bool:
    """Stop a process we started earlier (by PID file): SIGTERM, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True
