"""Clients and counts the recipes share: a session that remembers every answer, job requests
published straight to the bus, job records and Prometheus readings. (Nodes as processes a
recipe can SIGKILL are ``tests.support.agents.node_processes``.)"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aio_pika
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from lingua_shared.bus import Publisher, Topology
from lingua_shared.errors import DependencyDown
from lingua_shared.events import JobRequest
from lingua_shared.keys import Keys
from tests.support.sessions import ANSWER_TYPES, PCM, open_session
from tests.support.stack import Stack


@dataclass
class Session:
    """One client session that records every answer it gets, in arrival order."""

    ws: ClientConnection
    session_id: str
    answers: list[dict] = field(default_factory=list)
    closed: bool = False

    @classmethod
    async def open(cls, url: str, src: str = "zh", tgt: str = "en") -> Session:
        # results in order: the recipes check the order of answers on each connection
        ws, sid = await open_session(
            url, src, tgt, "ordered", client_version="faults", timeout=10, max_queue=None
        )
        return cls(ws, sid)

    @classmethod
    async def resume(cls, url: str, session_id: str, received: list[int]) -> Session:
        """Take ``session_id`` up on a new connection to ``url``, saying what it already has."""
        from websockets.asyncio.client import connect

        ws = await connect(url, max_queue=None)
        await ws.send(
            json.dumps(
                {"type": "session_init", "client_version": "faults",
                 "resume_session_id": session_id, "resume_received": received}
            )
        )  # fmt: skip
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "session_init_ack" and ack.get("resumed") is True, ack
        return cls(ws, session_id)

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


# -- job requests straight to the bus (the recipes that play the gateway) --------------------
# nodes for the requests that really go to nodes (zh->en): two simulated nodes of 64 slots
# (20 ms a job), so that hundreds of requests are answered in seconds
ASSIGN_NODES = (("node-r-a", {"capacity": 64}), ("node-r-b", {"capacity": 64}))


def request(i: int, run: str, src: str = "fr", tgt: str = "de") -> JobRequest:
    """Request ``i`` of ``run``; by default for fr->de, which no node serves (the job fails at
    once with NO_AVAILABLE_NODE); zh->en is what the suites' nodes serve. Its session's
    gateway ``gw-none`` does not exist: its outcome is never delivered."""
    return JobRequest(
        request_key=f"{run}:{i}",
        session_id=f"s-{run}",
        utterance_index=i,
        gateway_id="gw-none",
        conn_id="c-none",
        mode="one_way",
        src_lang=src,
        tgt_lang=tgt,
        audio="AQABAAEAAQA=",
        audio_format="pcm16",
        sample_rate=16000,
        trace_id=uuid.uuid4().hex,
        received_at_ms=int(time.time() * 1000),
    )


async def open_publisher(stack):  # type: ignore[no-untyped-def]
    conn = await aio_pika.connect_robust(
        stack.env["LINGUA_AMQP_URL"], timeout=5, reconnect_interval=0.5
    )
    topo = Topology(stack.env["LINGUA_BUS_PREFIX"], 5)
    return conn, await Publisher.open(conn, topo, confirm_timeout=5)


async def publish_confirmed(publisher: Publisher, ev, give_up_s: float = 60) -> int:  # type: ignore[no-untyped-def]
    """Publish until the broker confirms; returns how many tries it took (a producer that
    retries what was not confirmed: the cause of duplicates that consumers absorb)."""
    deadline = time.monotonic() + give_up_s
    tries = 0
    while True:
        tries += 1
        try:
            await publisher.event("job.request", ev)
            return tries
        except DependencyDown:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def ended_jobs(fredis, keys) -> int:  # type: ignore[no-untyped-def]
    """How many requests have ended: their job is done (a node answered) or failed (for
    fr->de at once: no node serves it)."""
    return sum(
        1 for j in (await job_records(fredis, keys)).values() if j["state"] in ("done", "failed")
    )


async def failure_codes(fredis, keys, session_id: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Error code -> how many failed answers wait in the outbox of ``session_id`` (a session
    of ``request()``: its gateway does not exist, so nothing leaves the outbox)."""
    outcomes = (await fredis.hgetall(keys.session_outbox(session_id))).values()
    return dict(Counter(c for c in (json.loads(v).get("error_code") for v in outcomes) if c))


async def assigned_jobs(fredis, keys) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(jobs a node answered, jobs dispatched more than once), over every job record."""
    jobs = (await job_records(fredis, keys)).values()
    done = sum(1 for j in jobs if j["state"] == "done" and j.get("node_id"))
    return done, sum(1 for j in jobs if int(j.get("attempt") or 0) > 1)


async def jobs_ended(fredis, keys, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await ended_jobs(fredis, keys) >= n


async def at_least(s: set[int], k: int) -> bool:
    return len(s) >= k
