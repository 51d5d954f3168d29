"""Clients, nodes and counts the recipes share: a simulated node as its own process (so it can
be SIGKILLed / SIGSTOPped), a session that remembers every answer, and Prometheus readings."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from lingua_shared.keys import Keys
from tests.integration.conftest import Stack

PCM = b"\x01\x00" * 1600  # 100 ms of PCM16 at 16 kHz
ANSWER_TYPES = ("translation_result", "missing_result", "error")


def session_url(stack: Stack, gw: str) -> str:
    return f"ws://127.0.0.1:{stack.procs[gw].port}/ws/session"


def node_url(stack: Stack, gw: str) -> str:
    return f"ws://127.0.0.1:{stack.procs[gw].port}/ws/node"


class NodeProcess:
    """``lingua-node-agent simulate --count 1`` as a child process: a node we may kill."""

    def __init__(
        self,
        gateway: str,
        node_prefix: str,
        log: Path,
        *,
        processing_ms: int = 20,
        capacity: int = 2,
    ) -> None:
        self.node_id = f"{node_prefix}-00000"
        argv = [
            sys.executable, "-m", "lingua_node_agent", "simulate",
            "--count", "1", "--gateway", gateway, "--id-prefix", node_prefix,
            "--regions", "eu", "--gpu-tiers", "a100", "--lang-sets", "en,ja,zh",
            "--processing-ms", str(processing_ms), "--capacity", str(capacity),
            "--heartbeat-interval-ms", "200", "--status-interval-s", "3600",
            "--drain-timeout-s", "1",
        ]  # fmt: skip
        out = open(log, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.proc.wait(10)


async def node_ready(redis: Redis, keys: Keys, node_id: str) -> bool:
    h = await redis.hmget(keys.node(node_id), "status", "connected")
    return h[0] == b"ready" and h[1] == b"1"


@dataclass
class Session:
    """One client session that records every answer it gets, in arrival order."""

    ws: ClientConnection
    session_id: str
    answers: list[dict] = field(default_factory=list)
    closed: bool = False

    @classmethod
    async def open(cls, url: str, src: str = "zh", tgt: str = "en") -> Session:
        ws = await connect(url, max_queue=None)
        await ws.send(
            json.dumps(
                {
                    "type": "session_init",
                    "client_version": "faults",
                    "platform": "test",
                    "mode": "one_way",
                    "src_lang": src,
                    "tgt_lang": tgt,
                    "audio_format": "pcm16",
                    # the recipes check the order of answers on each connection
                    "result_delivery": "ordered",
                }
            )
        )
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "session_init_ack", ack
        return cls(ws, ack["session_id"])

    async def utterance(self, index: int, request_id: str | None = None) -> None:
        msg = {
            "type": "utterance",
            "session_id": self.session_id,
            "utterance_index": index,
            "manual_cut": True,
            "src_lang": "zh",
            "tgt_lang": "en",
            "audio": base64.b64encode(PCM).decode(),
            "audio_format": "pcm16",
            "sample_rate": 16000,
        }
        if request_id:
            msg["request_id"] = request_id
        await self.ws.send(json.dumps(msg))

    async def collect(self, count: int, timeout: float = 20.0) -> list[dict]:
        """Wait until ``count`` answers in all have arrived (or the connection ends)."""
        deadline = time.monotonic() + timeout
        while len(self.answers) < count and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                raw = await asyncio.wait_for(self.ws.recv(), left)
            except TimeoutError:
                break
            except Exception:
                self.closed = True
                break
            msg = json.loads(raw)
            if msg.get("type") in ANSWER_TYPES:
                self.answers.append(msg)
        return self.answers

    def indexes(self) -> list[int]:
        return [int(a.get("utterance_index", a.get("details", {}).get("utterance_index", -1)))
                for a in self.answers]  # fmt: skip

    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(self.indexes()).values() if n > 1)

    async def close(self) -> None:
        await self.ws.close()


def metric(stack: Stack, name: str, sample: str, labels: dict[str, str] | None = None) -> float:
    """Sum of one Prometheus sample of a service (0 when absent)."""
    with urllib.request.urlopen(f"{stack.procs[name].base_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(sample)}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if not m:
            continue
        if labels and not all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            continue
        total += float(m.group(2))
    return total


async def job_records(redis: Redis, keys: Keys) -> dict[str, dict[str, str]]:
    """Every job record of the cell: job id -> its fields."""
    out: dict[str, dict[str, str]] = {}
    pattern = keys.prefix.replace("{", "[{]") + "job:*"
    async for raw in redis.scan_iter(match=pattern, count=1000):
        if raw.endswith(b":audio"):
            continue
        h = await redis.hgetall(raw)
        out[raw.decode().rsplit(":", 1)[1]] = {k.decode(): v.decode() for k, v in h.items()}
    return out


def log_count(stack: Stack, name: str, event: str) -> int:
    path = stack.procs[name].log_path
    if path is None or not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if event in line)
