"""The ``lingua`` scenario: the workload lingua's real clients and nodes produce.

**Sessions** are fed as lingua's web client feeds them: a ``two_way_auto`` session (zh/en,
``src_lang: "auto"``, ``auto_langs``, ``tenant_id: null``), then utterances of 12-20 Opus
chunks (3-5 s of speech), each a JSON ``audio_chunk`` of 13 ``[u16 length][packet]`` pairs
(600-1,000 bytes) every 256 ms, an empty ``is_final`` chunk 256 ms after the last one, never
an ``utterance_index``, and a pause of 0.8-1.2 s before the next utterance. The server
numbers utterances in the order they end, so the k-th final of a connection is index k.

**Nodes** are the load generator's light fleet (:mod:`lingua_bench.fleet`) in the lingua
profile: registered as lingua's agent registers (no ``acks_jobs``, no region, tier or
capacity), a beat every 15 s carrying the language capabilities, never a ``job_ack``. Each
job takes a time drawn uniformly from 0.3-2 s, a session's jobs are answered in the order
they reached the node (the ordering contract), and ~5 % of results are withheld (never sent):
the node's next answer for that session ends such a job with ``missing_result``.

**Overhead** is the time from the final chunk of an utterance handed to the client socket
to the ``job_assign`` received by the node, in this one process on one monotonic clock.
As in the rest of the bench (:mod:`lingua_bench.rules`) it counts from the final's
*scheduled* time (last chunk + 256 ms) when the generator sends it late.

**Steps.** A step runs N sessions speaking at once: a warm-up (not counted), a window whose
utterances are counted (those whose final is sent in it), then a drain in which the sessions
go on speaking, as real users do, until every counted utterance is answered (a
``translation_result`` or a ``missing_result``) or the drain time is up. A step holds when
its overhead p99 is <= 50 ms, every counted utterance was answered and no ``error`` came;
an utterance still unanswered adds the time it waited as its sample. N is searched with
:func:`lingua_bench.phases.search_max_rate` (N in place of a rate). Then ``at_half``: half
the maximum, for a longer window, with the CPU seconds of each process read over that
window (:class:`lingua_bench.procstat.CpuMeter`) divided by the utterances of the window.

``python -m lingua_bench.lingua`` is the generator process (the runner starts it against a
stack, as it starts :mod:`lingua_bench.loadgen`); :func:`run` is the scenario.

**Fixed load.** ``python -m lingua_bench.lingua --sessions 100 --seconds 30`` starts its own
stack (``--redis-url``, as the bench's), runs one phase of that many sessions (5 s warm-up,
the window, the drain) with the full node count (``--nodes`` to change it) and prints the
CPU ms per utterance of each process as JSON: the figure to compare before and after a
change, without the search. Run it more than once: the machine's other work shows in it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from lingua_bench.fleet import BenchNode, Fleet, FleetSpec
from lingua_bench.guard import require_loopback
from lingua_bench.hist import Latency
from lingua_bench.phases import Phase, search_max_rate
from lingua_bench.procstat import CpuMeter
from lingua_bench.report import write_report
from lingua_bench.sessions import open_session
from lingua_shared.protocol.webclient import (
    CHUNK_INTERVAL_S,
    opus_chunk,
    session_init,
)

CHUNK_S = CHUNK_INTERVAL_S
CHUNKS_PER_UTTERANCE = (12, 20)  # 3-5 s of speech
PAUSE_S = (0.8, 1.2)
PROCESSING_S = (0.3, 2.0)
WITHHOLD_RATE = 0.05
HEARTBEAT_MS = 15_000
P99_LIMIT_MS = 50.0
# CPU per utterance is reported for these processes (stack names -> figure names)
CPU_PROCESSES = {
    "gateway": "gateway",
    "dispatcher": "dispatcher",
    "node-manager": "node_manager",
    "rabbitmq": "rabbitmq",
    "redis": "redis",
}
ANSWERS = ("translation_result", "missing_result")


@dataclass(frozen=True)
class LinguaSizes:
    """How big the scenario is: the full run (~3 min), or ``--quick`` for a smoke test."""

    nodes: int
    start: int  # sessions of the first step
    factor: float
    max_sessions: int
    warmup_s: float
    window_s: float
    drain_s: float
    half_warmup_s: float
    half_window_s: float
    search_budget_s: float  # no search step starts past this (from the first step)
    # at the end, how long withheld jobs still open may take to reach their deadline (the
    # services' LINGUA_JOB_DEADLINE_MS, 30 s from assignment) and be answered
    deadline_wait_s: float = 40.0


FULL = LinguaSizes(
    nodes=1000,
    start=100,
    factor=2.0,
    max_sessions=3200,
    warmup_s=2.0,
    window_s=8.0,
    drain_s=15.0,
    half_warmup_s=4.0,
    half_window_s=20.0,
    search_budget_s=140.0,
)
QUICK = LinguaSizes(
    nodes=20,
    start=4,
    factor=2.0,
    max_sessions=4,
    warmup_s=1.0,
    window_s=5.0,
    drain_s=12.0,
    half_warmup_s=1.0,
    half_window_s=5.0,
    search_budget_s=30.0,
)


# -- figures of one step -------------------------------------------------------------------
@dataclass
class StepStats:
    """One step (or the ``at_half`` phase): its counted utterances and their fate."""

    name: str
    sessions: int
    t0_ns: int
    sent: int = 0
    assigned: int = 0
    redispatched: int = 0
    results: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    # withheld by their node and still open after the drain: the scheduler ends such a job
    # at its deadline (30 s from assignment), so these wait for it; their fate is in
    # ``late_answered`` / ``late_lost`` once the run has waited for their deadlines
    awaiting_deadline: int = 0
    session_moved: int = 0  # of those, how many had a later job of the session elsewhere
    late_answered: int = 0
    late_lost: int = 0
    late_max_s: float = 0.0
    late_lost_jobs: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    drain_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    overhead: Latency = field(init=False)
    send_lag: Latency = field(init=False)

    def __post_init__(self) -> None:
        self.overhead = Latency(f"{self.name}.overhead", self.t0_ns)
        self.send_lag = Latency(f"{self.name}.send_lag", self.t0_ns)

    @property
    def answered(self) -> int:
        return self.results + sum(self.missing.values())

    def held(self, limit_ms: float = P99_LIMIT_MS) -> bool:
        """Every counted utterance answered (result or missing_result), no ``error``, and
        the overhead p99 within the limit. An utterance whose node withheld its result and
        that is still open (``awaiting_deadline``) is not a loss: the scheduler answers it at
        the job's deadline, which the run waits for at its end (one never answered is an
        error of the run, ``never_answered``). The same verdict before and after those late
        answers came (they count among ``answered`` once they do)."""
        p99 = self.overhead.percentile_ms(99)
        return (
            self.sent > 0
            and self.answered - self.late_answered + self.awaiting_deadline == self.sent
            and not self.errors
            and p99 is not None
            and p99 <= limit_ms
        )

    def export(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "held": self.held(),
            "utterances": self.sent,
            "assigned": self.assigned,
            "redispatched": self.redispatched,
            "results": self.results,
            "missing_results": self.missing,
            "unanswered": self.unanswered,
            "withheld_awaiting_deadline": {
                "count": self.awaiting_deadline,
                "session_moved_to_another_node": self.session_moved,
                "answered_later": self.late_answered,
                "never_answered": self.late_lost,
                "never_answered_jobs": self.late_lost_jobs[:10],
                "max_wait_s": round(self.late_max_s, 2),
            },
            "errors": self.errors,
            "window_s": round(self.window_s, 2),
            "drain_s": round(self.drain_s, 2),
            "utterances_per_s": round(self.sent / self.window_s, 1) if self.window_s else None,
            "overhead": self.overhead.summary(),
            "send_lag": self.send_lag.summary(),
            "cpu_s": self.cpu_s,
        }


@dataclass
class Utterance:
    step: StepStats | None  # None: spoken outside a counting window (not counted)
    mono_ns: int
    assigned: bool = False
    late: bool = False  # withheld, still open after its step's drain
    job_id: str | None = None
    last_assign_ns: int = 0  # the latest job_assign (a job taken back is assigned again)


# -- nodes ---------------------------------------------------------------------------------
class LinguaFleet(Fleet):
    """The light fleet, answering as lingua's agent: no ack, a drawn processing time, a
    session's answers in arrival order, some results withheld."""

    def __init__(self, spec: FleetSpec, on_assign: Any, rng: random.Random) -> None:
        super().__init__(spec, on_assign, answer=True)
        self.rng = rng
        self.withhold_rate = WITHHOLD_RATE
        # (node id, session id) -> monotonic time of the last answer due on that node
        self.last_due: dict[tuple[str, str], float] = {}
        self.withheld = 0
        self.withheld_jobs: set[tuple[str, int]] = set()  # (session id, utterance index)
        self.answered = 0
        self.pending: set[asyncio.Task[None]] = set()

    def answer_time(self, node_id: str, session_id: str, now: float, processing: float) -> float:
        """When a job that reached ``node_id`` at ``now`` is answered: after its own
        processing, and never before the session's earlier jobs on that node."""
        key = (node_id, session_id)
        due = max(now + processing, self.last_due.get(key, 0.0) + 0.001)
        self.last_due[key] = due
        return due

    async def _answer(self, node: BenchNode, ws: ClientConnection, msg: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        sid = str(msg.get("session_id"))
        processing = self.rng.uniform(*PROCESSING_S)
        due = self.answer_time(node.node_id, sid, now, processing)
        if len(self.last_due) > 50_000:  # forget sessions whose answers are all out
            self.last_due = {k: v for k, v in self.last_due.items() if v > now}
        if self.withholds(msg):
            self.withheld += 1
            self.withheld_jobs.add((sid, int(msg.get("utterance_index") or 0)))
            return
        task = loop.create_task(self._send_result(ws, node, msg, due - now, processing))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def withholds(self, msg: dict[str, Any]) -> bool:
        """Whether this job's result is never sent (``withhold_rate`` of them)."""
        return self.rng.random() < self.withhold_rate

    async def _send_result(
        self, ws: ClientConnection, node: BenchNode, msg: dict[str, Any], delay: float, proc: float
    ) -> None:
        await asyncio.sleep(delay)
        result = {
            "type": "job_result",
            "job_id": msg["job_id"],
            "attempt_id": msg.get("attempt_id", 1),
            "node_id": node.node_id,
            "session_id": msg.get("session_id"),
            "utterance_index": msg.get("utterance_index"),
            "success": True,
            "text_asr": "bench",
            "text_translated": "bench",
            "tts_audio": "",
            "tts_format": "opus",
            "processing_time_ms": int(proc * 1000),
            "trace_id": msg.get("trace_id"),
        }
        try:
            await ws.send(orjson.dumps(result).decode())
            self.answered += 1
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        for t in list(self.pending):
            t.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        await super().close()


# -- sessions ------------------------------------------------------------------------------
class WebSession:
    """One session on its own connection, spoken as lingua's web client speaks."""

    def __init__(self, gen: LinguaGen, url: str, rng: random.Random) -> None:
        self.gen = gen
        self.url = url
        self.rng = rng
        self.ws: ClientConnection | None = None
        self.session_id = ""
        self.seq = 0
        self.next_index = 0
        self.reader: asyncio.Task[None] | None = None
        self.speaker: asyncio.Task[None] | None = None
        self.stop = False
        self.open_counted: set[int] = set()  # counted utterances not answered yet
        self.nodes: dict[int, str] = {}  # utterance index -> the node it was first given to

    async def open(self) -> None:
        ws, self.session_id = await open_session(self.url, session_init())
        self.ws = ws
        self.reader = asyncio.create_task(self._read(ws))

    def _frame(self, payload: str, final: bool) -> str:
        self.seq += 1
        return (
            f'{{"type":"audio_chunk","session_id":"{self.session_id}","seq":{self.seq},'
            f'"is_final":{"true" if final else "false"},"payload":"{payload}"}}'
        )

    def start(self) -> None:
        self.stop = False
        self.speaker = asyncio.create_task(self._speak())

    async def halt(self) -> None:
        """Stop speaking; an utterance under way is ended at once (a final, not counted)."""
        self.stop = True
        if self.speaker is not None:
            await asyncio.gather(self.speaker, return_exceptions=True)
            self.speaker = None

    async def _speak(self) -> None:
        assert self.ws is not None
        ws, gen, rng = self.ws, self.gen, self.rng
        loop = asyncio.get_running_loop()
        t = loop.time() + rng.uniform(0.0, 1.0)  # sessions do not start in step
        try:
            while not self.stop:
                await asyncio.sleep(max(0.0, t - loop.time()))
                if self.stop:
                    break  # nothing buffered: a final now would make no utterance
                for _ in range(rng.randint(*CHUNKS_PER_UTTERANCE)):
                    await ws.send(self._frame(gen.chunk_payload(), False))
                    t += CHUNK_S
                    await asyncio.sleep(max(0.0, t - loop.time()))
                    if self.stop:
                        break  # ended early: the final below ends what is buffered
                # the final: its scheduled time is ``t`` (last chunk + 256 ms)
                due_ns = time.monotonic_ns() - int((loop.time() - t) * 1e9)
                index = self.next_index
                self.next_index += 1
                gen.on_final(self, index, due_ns, counted=not self.stop)
                await ws.send(self._frame("", True))
                t += rng.uniform(*PAUSE_S)
        except ConnectionClosed:
            gen.session_errors["closed"] = gen.session_errors.get("closed", 0) + 1

    async def _read(self, ws: ClientConnection) -> None:
        loads = orjson.loads
        try:
            async for raw in ws:
                t_ns = time.monotonic_ns()
                msg = loads(raw)
                self.gen.on_message(self, msg, t_ns)
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        await self.halt()
        if self.ws is not None:
            try:
                await self.ws.close(1000, "bench done")
            except (OSError, WebSocketException):
                pass
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


# -- the generator -------------------------------------------------------------------------
@dataclass
class GenConfig:
    gateway: str
    sizes: LinguaSizes
    watch: dict[str, list[int]] = field(default_factory=dict)
    seed: int = 16
    progress: bool = True


class LinguaGen:
    def __init__(self, cfg: GenConfig) -> None:
        require_loopback(cfg.gateway)
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        base = cfg.gateway.rstrip("/")
        self.session_url = f"{base}/ws/session"
        self.fleet = LinguaFleet(
            FleetSpec(
                count=cfg.sizes.nodes,
                gateway_url=f"{base}/ws/node",
                heartbeat_ms=HEARTBEAT_MS,
                id_prefix="ln",
                profile="lingua",
            ),
            self.on_assign,
            random.Random(cfg.seed + 1),
        )
        # a pool of encoded chunks: building one per send would cost the generator, not
        # the services, and the gateway never looks inside them
        chunk_rng = random.Random(cfg.seed + 2)
        self.payloads = [base64.b64encode(opus_chunk(chunk_rng)).decode() for _ in range(256)]
        self.sessions: list[WebSession] = []
        self.utterances: dict[tuple[str, int], Utterance] = {}
        self.current: StepStats | None = None  # the step whose window is open
        self.steps: list[StepStats] = []
        self.session_errors: dict[str, int] = {}
        self.by_session: dict[str, WebSession] = {}
        self.late: set[tuple[str, int]] = set()  # withheld, waiting for their deadline
        self.t0_ns = time.monotonic_ns()

    def chunk_payload(self) -> str:
        return self.payloads[self.rng.randrange(len(self.payloads))]

    # -- hooks ------------------------------------------------------------------------
    def on_final(self, s: WebSession, index: int, due_ns: int, counted: bool) -> None:
        now = time.monotonic_ns()
        step = self.current if counted else None
        mono = min(due_ns, now)
        self.utterances[(s.session_id, index)] = Utterance(step, mono)
        if step is not None:
            step.sent += 1
            step.send_lag.record_ns(max(0, now - due_ns), now)
            s.open_counted.add(index)

    def on_assign(self, node: BenchNode, msg: dict[str, Any], t_ns: int) -> None:
        u = self.utterances.get((msg.get("session_id"), msg.get("utterance_index")))
        if u is None:
            return
        u.last_assign_ns = t_ns
        s = self.by_session.get(str(msg.get("session_id")))
        if s is not None and not u.assigned:
            s.nodes[int(msg.get("utterance_index") or 0)] = node.node_id
        if u.step is None:
            u.assigned = True
            return
        if u.assigned:
            u.step.redispatched += 1
            return
        u.assigned = True
        u.job_id = msg.get("job_id")
        u.step.assigned += 1
        u.step.overhead.record_ns(t_ns - u.mono_ns, t_ns)

    def on_message(self, s: WebSession, msg: dict[str, Any], t_ns: int) -> None:
        kind = msg.get("type")
        idx = msg.get("utterance_index")
        if kind in ANSWERS and isinstance(idx, int):
            u = self.utterances.pop((s.session_id, idx), None)
            if u is None or u.step is None:
                return
            s.open_counted.discard(idx)
            if u.late:
                u.step.late_answered += 1
                u.step.late_max_s = max(u.step.late_max_s, (t_ns - u.mono_ns) / 1e9)
                self.late.discard((s.session_id, idx))
            if kind == "translation_result":
                u.step.results += 1
            else:
                reason = str(msg.get("reason"))
                u.step.missing[reason] = u.step.missing.get(reason, 0) + 1
        elif kind == "error":
            code = str(msg.get("code"))
            step = self.current or (self.steps[-1] if self.steps else None)
            if step is not None:
                step.errors[code] = step.errors.get(code, 0) + 1

    # -- phases -----------------------------------------------------------------------
    async def _ensure_sessions(self, n: int) -> None:
        sem = asyncio.Semaphore(50)

        async def one() -> WebSession:
            async with sem:
                s = WebSession(self, self.session_url, random.Random(self.rng.random()))
                await s.open()
                return s

        missing = n - len(self.sessions)
        if missing > 0:
            new = await asyncio.gather(*(one() for _ in range(missing)))
            self.sessions += new
            self.by_session.update((s.session_id, s) for s in new)

    async def phase(
        self, name: str, n: int, warmup_s: float, window_s: float, drain_s: float
    ) -> StepStats:
        """``n`` sessions speak: warm-up, counted window (CPU read over it), drain."""
        await self._ensure_sessions(n)
        active = self.sessions[:n]
        st = StepStats(name, n, time.monotonic_ns())
        self.steps.append(st)
        cpu = CpuMeter(self.cfg.watch)
        for s in active:
            s.start()
        print(f"lingua: {name}: {n} sessions speaking", file=sys.stderr)
        await asyncio.sleep(warmup_s)
        cpu.start()
        self.current = st
        t = time.monotonic()
        await asyncio.sleep(window_s)
        self.current = None
        st.window_s = time.monotonic() - t
        st.cpu_s = cpu.stop()
        # drain: the sessions go on speaking until every counted utterance is answered
        t = time.monotonic()
        deadline = t + drain_s
        while time.monotonic() < deadline and any(s.open_counted for s in active):
            await asyncio.sleep(0.05)
        st.drain_s = time.monotonic() - t
        await asyncio.gather(*(s.halt() for s in active))
        now = time.monotonic_ns()
        for s in active:
            for idx in s.open_counted:
                key = (s.session_id, idx)
                u = self.utterances.get(key)
                if u is not None and key in self.fleet.withheld_jobs:
                    # the node's doing: the scheduler's answer is the job's deadline
                    u.late = True
                    self.late.add(key)
                    st.awaiting_deadline += 1
                    node = s.nodes.get(idx)
                    if any(i > idx and n != node for i, n in s.nodes.items()):
                        st.session_moved += 1
                    continue
                self.utterances.pop(key, None)
                st.unanswered += 1
                if u is not None and not u.assigned:
                    st.overhead.record_ns(now - u.mono_ns, now)  # waited at least this long
            s.open_counted.clear()
        await asyncio.sleep(0.5)  # let the last (uncounted) finals reach the gateway
        ex = st.export()
        print(
            f"lingua: {name}: held={ex['held']} utterances={st.sent} answered={st.answered} "
            f"overhead p50/p99={ex['overhead']['p50_ms']}/{ex['overhead']['p99_ms']} ms",
            file=sys.stderr,
        )
        return st

    async def run(self) -> dict[str, Any]:
        sz = self.cfg.sizes
        beats = asyncio.create_task(self.fleet.beat_forever())
        search: list[StepStats] = []
        best = 0.0
        half: StepStats | None = None
        try:
            reg_s = await self.fleet.connect_all()
            gc.collect()
            gc.freeze()

            async def measure(n: float) -> bool:
                st = await self.phase(
                    f"step@{int(n)}", int(n), sz.warmup_s, sz.window_s, sz.drain_s
                )
                search.append(st)
                return st.held()

            spec = Phase(
                "sessions",
                "step",
                sz.warmup_s + sz.window_s,
                start_rate=sz.start,
                factor=sz.factor,
                max_rate=sz.max_sessions,
            )
            deadline = time.monotonic() + sz.search_budget_s
            best, _ = await search_max_rate(measure, spec, deadline=deadline)
            if best >= 2:
                half = await self.phase(
                    "at_half", int(best // 2), sz.half_warmup_s, sz.half_window_s, sz.drain_s
                )
            await self._await_deadlines(sz.deadline_wait_s)
        finally:
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            for s in self.sessions:
                await s.close()
            await self.fleet.close()
        return self.report(reg_s, best, search, half)

    async def fixed(self, sessions: int, seconds: float, warmup_s: float) -> dict[str, Any]:
        """One phase at a fixed load: ``sessions`` speaking, a ``seconds`` window whose CPU
        is read, a drain; the figures to compare one build's CPU per utterance with
        another's (no search, no wait for withheld jobs' deadlines)."""
        beats = asyncio.create_task(self.fleet.beat_forever())
        try:
            reg_s = await self.fleet.connect_all()
            gc.collect()
            gc.freeze()
            st = await self.phase("fixed", sessions, warmup_s, seconds, self.cfg.sizes.drain_s)
        finally:
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            for s in self.sessions:
                await s.close()
            await self.fleet.close()
        ex = st.export()
        return {
            "sessions": sessions,
            "seconds": seconds,
            "nodes": self.cfg.sizes.nodes,
            "registration_s": round(reg_s, 2),
            "utterances": st.sent,
            "answered": st.answered,
            "held": ex["held"],
            "errors": st.errors,
            "overhead": ex["overhead"],
            "cpu_s": st.cpu_s,
            "cpu_ms_per_utterance": cpu_per_utterance(st),
        }

    async def _await_deadlines(self, limit_s: float) -> None:
        """Wait for the withheld utterances still open to be answered at their deadline:
        each for ``limit_s`` after its latest ``job_assign`` (a job taken back and given to a
        node that withholds it too waits for a second deadline), all within 3 x ``limit_s``.
        What is still open then was never answered."""
        if self.late:
            print(f"lingua: waiting for {len(self.late)} withheld jobs' deadlines", file=sys.stderr)
        end = time.monotonic() + 3 * limit_s

        def waiting() -> bool:
            now = time.monotonic_ns()
            return any(
                now - self.utterances[k].last_assign_ns < limit_s * 1e9
                for k in self.late
                if k in self.utterances
            )

        while self.late and waiting() and time.monotonic() < end:
            await asyncio.sleep(0.2)
        for key in self.late:
            u = self.utterances.pop(key, None)
            if u is not None and u.step is not None:
                u.step.late_lost += 1
                u.step.late_lost_jobs.append(str(u.job_id))
        self.late.clear()

    def report(
        self, reg_s: float, best: float, search: list[StepStats], half: StepStats | None
    ) -> dict[str, Any]:
        """The report; each step's ``held`` is the verdict the search acted on."""
        return {
            "config": {
                **asdict(self.cfg.sizes),
                "chunk_ms": CHUNK_S * 1000,
                "chunks_per_utterance": list(CHUNKS_PER_UTTERANCE),
                "pause_s": list(PAUSE_S),
                "processing_s": list(PROCESSING_S),
                "withhold_rate": WITHHOLD_RATE,
                "heartbeat_ms": HEARTBEAT_MS,
                "p99_limit_ms": P99_LIMIT_MS,
                "mode": "two_way_auto zh/en",
            },
            "registration": {"nodes": self.cfg.sizes.nodes, "seconds": round(reg_s, 2)},
            "max_sessions": int(best),
            "steps": [st.export() for st in search],
            "at_half": None if half is None else half.export(),
            "at_half_overhead_cdf": None if half is None else half.overhead.cdf(),
            "cpu_ms_per_utterance": None if half is None else cpu_per_utterance(half),
            "nodes": {
                "answered": self.fleet.answered,
                "withheld": self.fleet.withheld,
                "errors": self.fleet.errors,
                "disconnects": self.fleet.disconnects,
            },
            "session_errors": self.session_errors,
        }


def cpu_per_utterance(st: StepStats) -> dict[str, float | None] | None:
    """CPU ms of each process over the window / the utterances of the window, and the
    total of the five (the generator's own CPU is in ``cpu_s``, not in the total)."""
    if not st.sent:
        return None
    out: dict[str, float | None] = {}
    total = 0.0
    for proc, name in CPU_PROCESSES.items():
        sec = st.cpu_s.get(proc)
        out[name] = None if sec is None else round(sec * 1000 / st.sent, 3)
        total += sec or 0.0
    out["total"] = round(total * 1000 / st.sent, 3)
    return out


# -- the scenario --------------------------------------------------------------------------
def run(
    quick: bool,
    redis_url: str,
    amqp_url: str,
    work: Path,
    progress: bool,
    timeout_s: float,
) -> dict[str, Any]:
    """Start a stack, run the generator process against it, return its report."""
    extra = [f"--sizes={'quick' if quick else 'full'}", *([] if progress else ["--no-progress"])]
    return _generator_on_stack("lingua", extra, redis_url, amqp_url, work, timeout_s)


def run_fixed(
    sessions: int,
    seconds: float,
    nodes: int,
    redis_url: str,
    amqp_url: str,
    work: Path,
) -> dict[str, Any]:
    """Start a stack, run the generator at a fixed load against it, return its figures."""
    extra = [f"--sessions={sessions}", f"--seconds={seconds:g}", f"--nodes={nodes}"]
    return _generator_on_stack("lingua-fixed", extra, redis_url, amqp_url, work, seconds + 300)


def _generator_on_stack(
    tag: str, extra: list[str], redis_url: str, amqp_url: str, work: Path, timeout_s: float
) -> dict[str, Any]:
    """A fresh stack, ``python -m lingua_bench.lingua --gateway <it> <extra>`` metering its
    processes; the generator's report (``<work>/<tag>.json``)."""
    import subprocess

    from lingua_bench.scenarios import with_stack
    from lingua_bench.stack import BenchStack

    out = work / f"{tag}.json"

    def go(stack: BenchStack) -> dict[str, Any]:
        watch = [f"--watch={name}={pid}" for name, pids in stack.pids().items() for pid in pids]
        cmd = [sys.executable, "-m", "lingua_bench.lingua", "--gateway", stack.gateway_ws,
               *extra, "--out", str(out), *watch]  # fmt: skip
        proc = subprocess.run(cmd, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"lingua generator exited with {proc.returncode}")
        return json.loads(out.read_text())

    return with_stack(tag, redis_url, amqp_url, work, {}, go)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lingua_bench.lingua",
        description="lingua-profile nodes and web-client sessions through a real gateway.",
    )
    ap.add_argument(
        "--gateway",
        help="ws://127.0.0.1:PORT of the gateway (without it, --sessions starts its own stack)",
    )
    ap.add_argument("--sizes", choices=("full", "quick"), default="full")
    ap.add_argument(
        "--sessions",
        type=int,
        help="a fixed load instead of the search: this many sessions for --seconds",
    )
    ap.add_argument("--seconds", type=float, default=30.0, help="the fixed load's window")
    ap.add_argument("--warmup", type=float, default=5.0, help="the fixed load's warm-up")
    ap.add_argument("--nodes", type=int, help="nodes of the fixed load (default: the sizes')")
    ap.add_argument(
        "--redis-url",
        default=os.environ.get("LINGUA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        help="the stack's Redis (fixed load without --gateway)",
    )
    ap.add_argument(
        "--amqp-url",
        default=os.environ.get("LINGUA_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    ap.add_argument("--work", type=Path, default=Path("bench/results/work/lingua-fixed"))
    ap.add_argument("--watch", action="append", default=[], help="NAME=PID: CPU per phase")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--out", type=Path, help="JSON report (default: stdout)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    from lingua_bench.loadgen import parse_watch

    args = build_parser().parse_args(argv)
    sizes = QUICK if args.sizes == "quick" else FULL
    if args.nodes is not None:
        sizes = replace(sizes, nodes=args.nodes)
    if args.gateway is None:
        if args.sessions is None:
            print("lingua: --gateway, or --sessions to start a stack", file=sys.stderr)
            return 2
        try:
            require_loopback(args.redis_url)
            require_loopback(args.amqp_url)
        except ValueError as exc:
            print(f"lingua: {exc}", file=sys.stderr)
            return 2
        figures = run_fixed(
            args.sessions, args.seconds, sizes.nodes, args.redis_url, args.amqp_url, args.work
        )
        write_report(figures, args.out)
        return 0
    try:
        cfg = GenConfig(
            gateway=args.gateway,
            sizes=sizes,
            watch=parse_watch(args.watch),
            seed=args.seed,
            progress=not args.no_progress,
        )
        gen = LinguaGen(cfg)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"lingua: {exc}", file=sys.stderr)
        return 2
    from lingua_shared.runtime import install_uvloop

    install_uvloop()
    cfg.watch.setdefault("loadgen", [os.getpid()])
    if args.sessions is not None:
        report = asyncio.run(gen.fixed(args.sessions, args.seconds, args.warmup))
    else:
        report = asyncio.run(gen.run())
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
