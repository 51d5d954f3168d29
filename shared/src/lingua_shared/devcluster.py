"""A local Redis Cluster of real ``redis-server`` processes on loopback, for the tests, the
benchmarks and ``make cluster-up``: ``masters`` masters with ``replicas`` replicas each, created
with ``redis-cli --cluster create`` and stopped by PID.

Each node listens on a port from :func:`lingua_shared.devstack.free_port` and keeps its
cluster bus on a second such port (``cluster-port``), so nothing lands in the kernel's
ephemeral range. Nodes run in a session of their own; :meth:`LocalCluster.stop`
signals their PIDs only. Persistence is off (as for the CI's Redis): a node killed loses its
data, its replica keeps what it had received, which is what the failover tests need.

``python -m lingua_shared.devcluster up|down|status [--dir D]`` is the command line;
``python -m lingua_shared.devcluster run -- CMD ...`` starts a cluster in a temporary
directory, runs CMD with ``LINGUA_TEST_REDIS_CLUSTER_URL`` (the tests' Redis),
``LINGUA_REDIS_URL`` and ``LINGUA_REDIS_CLUSTER=true`` naming it, stops the cluster and exits
with CMD's status (``make test`` runs the Lua tests on a cluster this way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lingua_shared.devstack import free_port, port_answers

NODE_TIMEOUT_MS = 2_000  # a master unreachable this long is failed over to its replica
STATE_FILE = "cluster.json"


def _info(port: int, section: str) -> dict[str, str]:
    """``INFO <section>`` of one node as a dict."""
    lines = _cli(port, "info", section).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line)


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return out.stdout


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    pid: int = 0
    # the process, when this process started it (kept: a Popen collected while its process
    # runs is a ResourceWarning; a cluster recorded by `up` is known by PID only)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True


@dataclass
class LocalCluster:
    base: Path
    masters: int = 3
    replicas: int = 1
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A URL naming one live node (the cluster client discovers the rest)."""
        live = self.live()
        return f"redis://127.0.0.1:{(live or self.nodes)[0].port}/0"

    @property
    def state_file(self) -> Path:
        return self.base / STATE_FILE

    def start(self, timeout: float = 60.0) -> LocalCluster:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError(
                "redis-server and redis-cli are needed (Debian/Ubuntu: apt-get install "
                "redis-server; macOS: brew install redis)"
            )
        self.base.mkdir(parents=True, exist_ok=True)
        count = self.masters * (1 + self.replicas)
        self.nodes = [ClusterNode(free_port(), free_port()) for _ in range(count)]
        try:
            for node in self.nodes:
                self._spawn(node)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                while not port_answers(node.port):
                    if not node.alive():
                        raise RuntimeError(f"redis-server on {node.port} exited; see {self.base}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"redis-server on {node.port} not up; see {self.base}")
                    time.sleep(0.05)
            create = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-800:]}")
            self.wait_ok(deadline - time.monotonic(), replicas=self.masters * self.replicas)
        except BaseException:
            self.stop()
            raise
        self.state_file.write_text(json.dumps([[n.port, n.bus_port, n.pid] for n in self.nodes]))
        return self

    def _spawn(self, node: ClusterNode) -> None:
        d = self.base / str(node.port)
        d.mkdir(parents=True, exist_ok=True)
        log = open(d / "redis.log", "ab")
        argv = ["redis-server", "--port", str(node.port), "--bind", "127.0.0.1"]
        argv += ["--cluster-enabled", "yes", "--cluster-port", str(node.bus_port)]
        argv += ["--cluster-config-file", "nodes.conf"]
        argv += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(d)]
        argv += ["--maxmemory-policy", "noeviction"]
        # a replica must have synced before its master dies, or it may not take over (its
        # data counts as too old): no 5 s wait for more replicas before the first sync
        argv += ["--repl-diskless-sync-delay", "0"]
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        node.pid, node.proc = proc.pid, proc

    def wait_ok(self, timeout: float = 30.0, replicas: int = 0) -> None:
        """Until every live node says ``cluster_state:ok`` and knows all slots covered, every
        live replica's link to its master is up (synced: it can take over), and at least
        ``replicas`` nodes are such replicas (a node is a master until its CLUSTER REPLICATE
        has taken effect)."""
        deadline = time.monotonic() + max(1.0, timeout)
        while True:
            live = [n for n in self.nodes if n.alive()]
            states = [_cli(n.port, "cluster", "info") for n in live]
            links = [_info(n.port, "replication") for n in live]
            synced = sum(r.get("master_link_status") == "up" for r in links)
            if (
                states
                and all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states)
                and all(
                    r.get("role") == "master" or r.get("master_link_status") == "up" for r in links
                )
                and synced >= replicas
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok after {timeout:.0f}s; see {self.base}")
            time.sleep(0.1)

    def master_of(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot now."""
        slot = int(_cli(self.live()[0].port, "cluster", "keyslot", key).strip())
        for line in _cli(self.live()[0].port, "cluster", "nodes").splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for rng in parts[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    port = int(parts[1].split(":")[1].split("@")[0])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """A live replica of ``master`` whose link to it is up (as the replica itself says:
        the other nodes learn of a new replica by gossip, a moment later)."""
        for n in self.live():
            info = _info(n.port, "replication")
            if info.get("master_port") == str(master.port) and (
                info.get("master_link_status") == "up"
            ):
                return n
        raise LookupError(f"no replica of {master.port} with its link up")

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive()]

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node (a crash: no shutdown, no last write)."""
        os.kill(node.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while node.alive() and time.monotonic() < deadline:  # (alive() reaps our own child)
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            if node.alive():
                os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while node.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if node.alive():
                os.kill(node.pid, signal.SIGKILL)
                if node.proc is not None:
                    node.proc.wait(5)
        self.state_file.unlink(missing_ok=True)

    @classmethod
    def from_state(cls, base: Path) -> LocalCluster:
        rows = json.loads((base / STATE_FILE).read_text())
        return cls(base, nodes=[ClusterNode(p, b, pid) for p, b, pid in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lingua_shared.devcluster", description=__doc__)
    ap.add_argument("command", choices=("up", "down", "status", "run"))
    ap.add_argument("--dir", type=Path, default=Path(".run/redis-cluster"))
    ap.add_argument("--masters", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=1)
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.command == "run":
        if not cmd:
            ap.error("run needs a command: run -- CMD ...")
        with tempfile.TemporaryDirectory(prefix="lingua-cluster-") as tmp:
            c = LocalCluster(Path(tmp), args.masters, args.replicas).start()
            env = {
                **os.environ,
                "LINGUA_TEST_REDIS_CLUSTER_URL": c.url,
                "LINGUA_REDIS_URL": c.url,
                "LINGUA_REDIS_CLUSTER": "true",
            }
            print(f"Redis Cluster of {len(c.nodes)} nodes at {c.url}: {' '.join(cmd)}", flush=True)
            try:
                return subprocess.run(cmd, env=env, check=False).returncode
            finally:
                c.stop()
    if args.command == "up":
        if (args.dir / STATE_FILE).exists() and LocalCluster.from_state(args.dir).live():
            print(
                f"a cluster already runs from {args.dir}: {LocalCluster.from_state(args.dir).url}"
            )
            return 1
        c = LocalCluster(args.dir, args.masters, args.replicas).start()
        print(f"Redis Cluster up: {len(c.nodes)} nodes, LINGUA_REDIS_URL={c.url}")
        print("  set LINGUA_REDIS_CLUSTER=true with it; stop it with: make cluster-down")
        return 0
    if not (args.dir / STATE_FILE).exists():
        print(f"no cluster recorded in {args.dir}")
        return 0 if args.command == "down" else 1
    c = LocalCluster.from_state(args.dir)
    if args.command == "down":
        c.stop()
        print(f"stopped {len(c.nodes)} Redis Cluster nodes")
        return 0
    for n in c.nodes:
        print(f"127.0.0.1:{n.port} pid {n.pid} {'up' if n.alive() else 'down'}")
    return 0 if c.live() else 1


if __name__ == "__main__":
    sys.exit(main())
