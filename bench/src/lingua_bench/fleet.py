"""Thousands of simulated nodes in one process, on raw WebSockets.

The node descriptions (regions, GPU tiers, language sets, services, hardware) come from the
node-agent simulator, so the gateway sees exactly what the simulator's agents would register.
The transport is lighter than a full :class:`NodeAgent`: one pre-formatted heartbeat per node,
one pacing task for the whole fleet, and job answers sent at once. At 10,000 nodes the SDK
agent's per-beat model building would cost the load generator more CPU than the services it
measures on a two-core machine, and the figures would describe the generator, not the system.

Heartbeats carry a sequence number in ``resource_usage.cpu_percent`` (``seq % 1000 / 10``),
which node-manager stores on the node record: a reader of Redis can tell exactly which beat
was applied, and so measure the apply lag of each one (see :mod:`lingua_bench.applylag`).

A fleet larger than one process's open-file limit is split over processes: ``shards`` and
``shard`` make a :class:`Fleet` hold only the nodes whose index ``i % shards == shard`` (each
keeps its fleet-wide index, id and description, and the pacing by index stays fleet-wide),
and ``gateway_urls`` spreads the nodes over gateway replicas (node ``i`` connects to
``gateway_urls[i % len(gateway_urls)]``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.protocol import State

from lingua_node_agent.capabilities import build_register, language_capabilities, services_for
from lingua_node_agent.simulator import SimConfig, _sim_hardware

SEQ_MOD = 1000  # beats are numbered modulo this, encoded as cpu_percent = seq / 10
YIELD_EVERY = 100  # beats sent in a row before the pacing loop lets the other tasks run


def seq_to_cpu(seq: int) -> float:
    return (seq % SEQ_MOD) / 10


def cpu_to_seq(cpu: float) -> int:
    return round(cpu * 10) % SEQ_MOD


class RegistrationIncomplete(Exception):
    """The fleet's registrations did not all complete within their deadline."""

    def __init__(self, registered: int, nodes: int, seconds: float) -> None:
        super().__init__(f"{registered} of {nodes} nodes registered in {seconds:.0f} s")
        self.registered = registered
        self.nodes = nodes
        self.seconds = seconds


@dataclass
class FleetSpec:
    count: int
    gateway_url: str  # ws://127.0.0.1:<port>/ws/node
    heartbeat_ms: int = 1000
    capacity: int = 4
    id_prefix: str = "bn"
    connect_concurrency: int = 200
    # new connections per second (None: as fast as ``connect_concurrency`` allows). A real
    # fleet connects over time; 10,000 nodes all at once measures a thundering herd instead
    register_per_s: float | None = None
    # "lingua": register and beat as lingua's own agent does (no acks_jobs, no region...,
    # language capabilities in every beat); what a node does with a job is the answer hook's
    profile: str = "standard"
    lang_sets: list[list[str]] = field(default_factory=lambda: [["en", "zh"], ["en", "ja", "zh"]])
    regions: list[str] = field(default_factory=lambda: ["eu", "us"])
    gpu_tiers: list[str] = field(default_factory=lambda: ["a100", "t4"])
    # this process holds the nodes i with i % shards == shard (of ``count`` in the fleet)
    shards: int = 1
    shard: int = 0
    # gateway replicas: node i connects to gateway_urls[i % len(...)] (empty: gateway_url)
    gateway_urls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.shards < 1 or not 0 <= self.shard < self.shards:
            raise ValueError(f"shard {self.shard} of {self.shards} shards")

    def url_of(self, index: int) -> str:
        """The gateway node ``index`` (fleet-wide) connects to."""
        urls = self.gateway_urls
        return urls[index % len(urls)] if urls else self.gateway_url


# what a node does with a job_assign: (node, message, monotonic ns at receipt)
AssignHook = Callable[["BenchNode", dict[str, Any], int], None]


class BenchNode:
    """One node: its socket, its register frame, its heartbeat counter."""

    __slots__ = (
        "acked",
        "hb_head",
        "hb_tail",
        "index",
        "node_id",
        "register_frame",
        "registered",
        "reregisters",
        "sent_ms",
        "seq",
        "ws",
    )

    def __init__(self, index: int, node_id: str, register_frame: str, static_tail: str) -> None:
        self.index = index
        self.node_id = node_id
        self.register_frame = register_frame
        self.hb_head = '{"type":"node_heartbeat","node_id":"' + node_id + '","timestamp":'
        self.hb_tail = static_tail
        self.ws: ClientConnection | None = None
        self.registered: asyncio.Future[None] | None = None
        self.acked = False  # a node_register_ack came: the node beats from now on
        self.seq = 0
        self.reregisters = 0
        # wall-clock ms at which each recent beat was sent: seq -> ms (sampled nodes only)
        self.sent_ms: deque[tuple[int, float]] | None = None

    def heartbeat_frame(self, now_wall_ms: int) -> str:
        self.seq += 1
        cpu = seq_to_cpu(self.seq)
        return (
            f'{self.hb_head}{now_wall_ms},"resource_usage":{{"cpu_percent":{cpu},'
            f'"mem_percent":30.0,"running_jobs":0}}{self.hb_tail}'
        )


class Fleet:
    """``count`` nodes: :meth:`connect_all`, then :meth:`beat_forever`, then :meth:`close`."""

    def __init__(self, spec: FleetSpec, on_assign: AssignHook, answer: bool = True) -> None:
        self.spec = spec
        self.on_assign = on_assign
        self.answer = answer
        sim = SimConfig(
            count=spec.count,
            gateway=spec.gateway_url,
            lang_sets=spec.lang_sets,
            regions=spec.regions,
            gpu_tiers=spec.gpu_tiers,
            id_prefix=spec.id_prefix,
            heartbeat_interval_ms=spec.heartbeat_ms,
            capacity=spec.capacity,
            profile=spec.profile,
        )
        self.nodes: list[BenchNode] = []
        for i in range(spec.shard, spec.count, spec.shards):
            cfg = sim.node_config(i)
            reg = build_register(cfg, _sim_hardware(cfg.gpu_tier or "")).to_wire()
            installed, caps = services_for(cfg)
            services = json.dumps([s.to_wire() for s in installed], separators=(",", ":"))
            capabilities = json.dumps([c.to_wire() for c in caps], separators=(",", ":"))
            tail = f',"installed_services":{services},"capability_by_type":{capabilities}'
            if cfg.lingua:
                langs = json.dumps(language_capabilities(cfg).to_wire(), separators=(",", ":"))
                tail += f',"language_capabilities":{langs}'
            tail += "}"
            node_id = cfg.node_id or f"{spec.id_prefix}-{i:05d}"
            self.nodes.append(BenchNode(i, node_id, json.dumps(reg, separators=(",", ":")), tail))
        self.by_id = {n.node_id: n for n in self.nodes}
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: dict[str, int] = {}
        self.disconnects = 0
        self.max_backlog_ms = 0.0  # how far the pacing loop fell behind (generator health)
        self.beats_sent = 0
        self.closing = False

    # -- connection ---------------------------------------------------------------------
    async def connect_all(
        self, progress: Callable[[int], None] | None = None, deadline_s: float | None = None
    ) -> float:
        """Connect and register every node (bounded concurrency, paced at ``register_per_s``
        when set); returns the seconds taken. Raises ``RuntimeError`` naming how many failed,
        since a partial fleet would measure something else than what was asked, and
        :class:`RegistrationIncomplete` when ``deadline_s`` passes with registrations still
        waiting (queued by a slow stack, not refused: a capacity limit, not a crash)."""
        sem = asyncio.Semaphore(self.spec.connect_concurrency)
        failed: list[str] = []
        t0 = time.monotonic()
        rate = self.spec.register_per_s

        async def one(node: BenchNode) -> None:
            if rate:
                await asyncio.sleep(max(0.0, t0 + node.index / rate - time.monotonic()))
            async with sem:
                try:
                    await self._connect(node)
                except (OSError, TimeoutError, WebSocketException, RuntimeError) as exc:
                    failed.append(f"{node.node_id}: {exc!r}")
                if progress is not None:
                    progress(1)

        everyone = asyncio.gather(*(one(n) for n in self.nodes))
        try:
            await asyncio.wait_for(everyone, deadline_s)
        except TimeoutError:
            acked = sum(1 for n in self.nodes if n.acked)
            raise RegistrationIncomplete(acked, len(self.nodes), time.monotonic() - t0) from None
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(self.nodes)} nodes did not register; first: {failed[0]}"
            )
        return time.monotonic() - t0

    async def _connect(self, node: BenchNode) -> None:
        ws = await connect(
            self.spec.url_of(node.index),
            compression=None,
            proxy=None,  # loopback: no proxy lookup in the environment on every connect
            ping_interval=None,  # the gateway pings; a node only answers
            max_size=2**22,
            open_timeout=60,
            close_timeout=2,
        )
        node.ws = ws
        node.registered = asyncio.get_running_loop().create_future()
        self.tasks.append(asyncio.create_task(self._receive(node, ws)))
        await ws.send(node.register_frame)
        await asyncio.wait_for(asyncio.shield(node.registered), 60)

    async def _receive(self, node: BenchNode, ws: ClientConnection) -> None:
        loads = orjson.loads
        try:
            async for raw in ws:
                t_ns = time.monotonic_ns()
                msg = loads(raw)
                kind = msg.get("type")
                if kind == "job_assign":
                    self.on_assign(node, msg, t_ns)
                    if self.answer:
                        await self._answer(node, ws, msg)
                elif kind == "node_register_ack":
                    node.acked = True
                    if node.registered is not None and not node.registered.done():
                        node.registered.set_result(None)
                elif kind == "node_control":
                    if msg.get("command") == "reregister":
                        node.reregisters += 1
                        await ws.send(node.register_frame)
                elif kind == "error":
                    code = str(msg.get("code"))
                    self.errors[code] = self.errors.get(code, 0) + 1
                    if node.registered is not None and not node.registered.done():
                        node.registered.set_exception(
                            RuntimeError(f"registration refused: {msg.get('message')}")
                        )
        except ConnectionClosed:
            pass
        finally:
            if not self.closing:
                self.disconnects += 1

    async def _answer(self, node: BenchNode, ws: ClientConnection, msg: dict[str, Any]) -> None:
        """Ack and answer at once: the node costs nothing, so the scheduler is what is timed."""
        common = {
            "job_id": msg["job_id"],
            "attempt_id": msg.get("attempt_id", 1),
            "node_id": node.node_id,
            "session_id": msg.get("session_id"),
            "trace_id": msg.get("trace_id"),
        }
        await ws.send(orjson.dumps({"type": "job_ack", **common}).decode())
        result = {
            "type": "job_result",
            **common,
            "utterance_index": msg.get("utterance_index"),
            "success": True,
            "text_asr": "bench",
            "text_translated": "bench",
            "tts_audio": "",
            "tts_format": "pcm16",
            "processing_time_ms": 0,
        }
        await ws.send(orjson.dumps(result).decode())

    # -- heartbeats ---------------------------------------------------------------------
    def sample(self, count: int) -> list[BenchNode]:
        """Nodes spread evenly over the fleet whose beat times are remembered (apply lag)."""
        step = max(1, len(self.nodes) // max(1, count))
        picked = self.nodes[::step][:count]
        for n in picked:
            n.sent_ms = deque(maxlen=32)
        return picked

    async def beat_forever(self) -> None:
        """Every node beats once per interval, phases spread evenly over the interval, from
        one task. How far the loop ever fell behind is kept in ``max_backlog_ms``.

        Start it before :meth:`connect_all`: like a real agent, a node must beat from its
        ack on, or the first nodes of a long registration would outlive their TTL unbeaten."""
        nodes = self.nodes
        n = len(nodes)
        interval = self.spec.heartbeat_ms / 1000
        tick = min(0.01, interval / 4)
        start = time.monotonic()
        done = 0  # beats emitted since start (node = done % n)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            due = int((now - start) / interval * n)
            backlog_ms = (due - done) / n * interval * 1000
            self.max_backlog_ms = max(self.max_backlog_ms, backlog_ms)
            while done < due:
                node = nodes[done % n]
                done += 1
                if done % YIELD_EVERY == 0:
                    # a send that needs no drain never yields: after a stall, a catch-up of
                    # thousands of beats would hold the loop, and the pongs and handshakes
                    # of every other socket would wait behind it
                    await asyncio.sleep(0)
                ws = node.ws
                if ws is None or not node.acked:
                    continue  # not acked yet: a node beats only once registered
                if ws.state is not State.OPEN:
                    # closing: a send would wait up to close_timeout for the close to end,
                    # and every other node's beat with it
                    continue
                wall_ms = time.time_ns() / 1e6
                frame = node.heartbeat_frame(int(wall_ms))
                try:
                    await ws.send(frame)
                except ConnectionClosed:
                    continue
                self.beats_sent += 1
                if node.sent_ms is not None:
                    node.sent_ms.append((node.seq % SEQ_MOD, wall_ms))

    async def close(self) -> None:
        """Close every socket with 1000 (graceful: the scheduler forgets the nodes at once)."""
        self.closing = True

        async def one(node: BenchNode) -> None:
            if node.ws is not None:
                try:
                    await node.ws.close(1000, "bench done")
                except (OSError, WebSocketException):
                    pass

        sem = asyncio.Semaphore(500)

        async def bounded(node: BenchNode) -> None:
            async with sem:
                await one(node)

        await asyncio.gather(*(bounded(n) for n in self.nodes), return_exceptions=True)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
