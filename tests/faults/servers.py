"""Our own Redis and RabbitMQ on other loopback ports, so that the fault suite may kill, stop
and restart them without touching the servers everybody else uses.

Each is a child process we started; signals go to its PID only. A restart reuses the port and
the data directory, as a real restart of the same server would (AOF for Redis, Mnesia and the
quorum queue logs for RabbitMQ).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from lingua_shared.devstack import free_port


class OwnServer:
    name = "server"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # subclasses
    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        if not self.port:
            self.port = free_port()
        argv, env = self.command()
        self.starts += 1
        log = open(self.base / f"{self.name}.out", "ab")
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}; see {self.base}")
            if self.ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.base}")

    def signal(self, sig: int) -> None:
        """Signal our own server's process group (the server and its helpers, nothing else)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no final flush."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                assert self.proc is not None
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> float:
        """Kill (if running) and start again on the same port; returns seconds to ready."""
        if self.alive():
            self.kill()
        t0 = time.monotonic()
        self.start()
        return time.monotonic() - t0


class OwnRedis(OwnServer):
    name = "redis"

    def command(self) -> tuple[list[str], dict[str, str]]:
        exe = shutil.which("redis-server") or "redis-server"
        return [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", str(self.base),
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.base / "redis.log"),
        ], {}  # fmt: skip

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class OwnRabbit(OwnServer):
    """A RabbitMQ node of our own: its own node name, ports, Mnesia and logs, no plugins."""

    name = "rabbit"

    def __init__(self, base: Path, n: int = 1) -> None:
        super().__init__(base)
        self.node = f"faults-{os.getpid()}-{n}@localhost"
        self.dist_port = 0
        (base / "mnesia").mkdir(exist_ok=True)
        (base / "log").mkdir(exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "rabbitmq.conf").write_text("loopback_users = none\n")

    def command(self) -> tuple[list[str], dict[str, str]]:
        if not self.dist_port:
            self.dist_port = free_port()
        exe = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not Path(exe).exists():
            exe = shutil.which("rabbitmq-server") or "rabbitmq-server"
        b = self.base
        return [exe], {
            "HOME": str(b),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ready(self) -> bool:
        # the AMQP listener opens last in the boot sequence: a protocol header answered
        # with a Connection.Start frame means the broker accepts clients
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                return s.recv(8).startswith(b"\x01\x00\x00")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"
