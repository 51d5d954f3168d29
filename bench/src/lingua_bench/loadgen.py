"""``python -m lingua_bench.loadgen``: N simulated nodes and M client sessions through a real
gateway, for a fixed time, then a JSON report and PNG plots.

Everything runs in this one process on one event loop: the nodes (:mod:`lingua_bench.fleet`)
and the sessions (:mod:`lingua_bench.sessions`), so an utterance's send time and its
``job_assign`` receipt are read from the same monotonic clock. It only ever connects to
loopback (:mod:`lingua_bench.guard`), stops by itself when its phases are done, and closes
every socket gracefully so the scheduler forgets its nodes at once.

Example (a stack already up on the default ports)::

    python -m lingua_bench.loadgen --gateway ws://127.0.0.1:5010 --nodes 1000 --sessions 20 \\
        --phase low=closed:10 --phase r200=open:200:10 --out /tmp/lg.json --plots /tmp/lg
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from tqdm import tqdm

from lingua_bench.applylag import ApplyLagSampler
from lingua_bench.fleet import BenchNode, Fleet, FleetSpec, RegistrationIncomplete
from lingua_bench.guard import require_loopback
from lingua_bench.phases import Phase, PhaseStats, parse_phase, search_max_rate
from lingua_bench.procstat import CpuMeter
from lingua_bench.report import write_report
from lingua_bench.rules import DRAIN_S, P99_LIMIT_MS, SEARCH_SPLITS, scheduled_ns
from lingua_bench.sessions import BenchSession
from lingua_shared.keys import Keys

PhaseBody = Callable[[PhaseStats, float], Awaitable[None]]
HOP_SAMPLES = 300  # jobs per closed phase whose service-side stamps are read back
HOP_FIELDS = ("received_at_ms", "created_at", "assigned_at", "acked_at", "finished_at")


@dataclass
class LoadConfig:
    gateway: str  # ws://127.0.0.1:PORT (the /ws/node and /ws/session paths are added)
    nodes: int = 100
    sessions: int = 10
    phases: list[Phase] = field(default_factory=list)
    heartbeat_ms: int = 15_000
    capacity: int = 4
    audio_ms: int = 100
    src: str = "zh"
    tgt: str = "en"
    redis_url: str | None = None
    cell: str | None = None
    lag_sample: int = 200
    p99_limit_ms: float = P99_LIMIT_MS
    drain_s: float = DRAIN_S
    watch: dict[str, list[int]] = field(default_factory=dict)
    progress: bool = True
    id_prefix: str = "bn"
    register_per_s: float | None = None
    # registrations still waiting this long after the first connect: the report says so
    # (``registration.incomplete``) and no phase runs (None: wait for every node)
    register_deadline_s: float | None = None

    def check(self) -> None:
        require_loopback(self.gateway)
        if self.redis_url:
            require_loopback(self.redis_url)
        if self.nodes < 1 or self.sessions < 0:
            raise ValueError("nodes must be >= 1 and sessions >= 0")
        if self.register_per_s is not None and self.register_per_s <= 0:
            raise ValueError("register_per_s must be > 0")
        if self.register_deadline_s is not None and self.register_deadline_s <= 0:
            raise ValueError("register_deadline_s must be > 0")
        needs_sessions = any(p.kind != "heartbeats" for p in self.phases)
        if needs_sessions and self.sessions < 1:
            raise ValueError("job phases need at least one session")
        if any(p.kind == "heartbeats" for p in self.phases) and not (self.redis_url and self.cell):
            raise ValueError("a heartbeats phase needs --redis-url and --cell (apply lag)")
        if not self.phases:
            raise ValueError("no phase given (--phase NAME=KIND:ARGS)")


@dataclass
class InFlight:
    phase: PhaseStats
    mono_ns: int
    wall_ms: float
    assigned: bool = False
    job_id: str | None = None
    assign_wall_ms: float | None = None
    done: asyncio.Future[None] | None = None
    hop: dict[str, float] | None = None


class LoadGen:
    def __init__(self, cfg: LoadConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.t0_ns = time.monotonic_ns()
        self.inflight: dict[tuple[str, int], InFlight] = {}
        self.results: dict[str, PhaseStats] = {}
        self.hops: list[dict[str, Any]] = []
        self.heartbeat_report: dict[str, Any] = {}
        self.incomplete: RegistrationIncomplete | None = None
        self.max_sustained: dict[str, float] = {}
        self.step_log: dict[str, list[dict[str, Any]]] = {}
        base = cfg.gateway.rstrip("/")
        self.fleet = Fleet(
            FleetSpec(
                count=cfg.nodes,
                gateway_url=f"{base}/ws/node",
                heartbeat_ms=cfg.heartbeat_ms,
                capacity=cfg.capacity,
                id_prefix=cfg.id_prefix,
                register_per_s=cfg.register_per_s,
            ),
            self.on_assign,
        )
        self.session_url = f"{base}/ws/session"
        self.sessions: list[BenchSession] = []
        self.redis: Redis | None = Redis.from_url(cfg.redis_url) if cfg.redis_url else None
        self.keys = Keys(cfg.cell) if cfg.cell else None
        self.cpu_pids = {**cfg.watch, "loadgen": [os.getpid()]}

    # -- hooks ----------------------------------------------------------------------------
    def on_assign(self, node: BenchNode, msg: dict[str, Any], t_ns: int) -> None:
        f = self.inflight.get((msg.get("session_id"), msg.get("utterance_index")))
        if f is None:
            return
        if f.assigned:
            f.phase.redispatched += 1
            return
        f.assigned = True
        f.phase.assigned += 1
        f.phase.dispatch.record_ns(t_ns - f.mono_ns, t_ns)
        if f.hop is not None:
            f.hop["job_id"] = msg.get("job_id")
            f.hop["node_recv"] = f.wall_ms + (t_ns - f.mono_ns) / 1e6

    def on_result(self, s: BenchSession, idx: int, msg: dict[str, Any], t_ns: int) -> None:
        f = self.inflight.pop((s.session_id, idx), None)
        if f is None:
            return
        kind = msg.get("type")
        if kind == "translation_result":
            f.phase.completed += 1
            f.phase.roundtrip.record_ns(t_ns - f.mono_ns, t_ns)
            if f.hop is not None:
                f.hop["client_recv"] = f.wall_ms + (t_ns - f.mono_ns) / 1e6
                self.hops.append(f.hop)
        else:
            f.phase.error(str(msg.get("code") or msg.get("reason") or kind))
        if f.done is not None and not f.done.done():
            f.done.set_result(None)

    # -- run ------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        bar = self._bar(cfg.nodes, "registering nodes")
        beats = asyncio.create_task(self.fleet.beat_forever())
        audio = b"\x01\x00" * (16 * cfg.audio_ms)  # PCM16 at 16 kHz
        try:
            try:
                reg_s = await self.fleet.connect_all(
                    bar.update if bar else None, cfg.register_deadline_s
                )
            except RegistrationIncomplete as exc:
                # a capacity limit of the stack, reported as such: no phase measures a
                # fleet other than the one asked for
                self.incomplete, reg_s = exc, exc.seconds
                return self.report(reg_s)
            finally:
                if bar:
                    bar.close()
            for _ in range(cfg.sessions):
                s = BenchSession(self.session_url, cfg.src, cfg.tgt, audio, self.on_result)
                await s.open()
                self.sessions.append(s)
            # The fleet (10,000 connections and their buffers) lives until the end: out of
            # the collector's sight, or every full collection would walk it, stopping this
            # process's loop for tens of milliseconds and charging that to the scheduler.
            gc.collect()
            gc.freeze()
            for phase in cfg.phases:
                await self._phase(phase)
        finally:
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            for s in self.sessions:
                await s.close()
            await self.fleet.close()
            if self.redis is not None:
                await self.redis.aclose()
        return self.report(reg_s)

    async def _phase(self, phase: Phase) -> None:
        if phase.kind == "closed":
            await self._measured(phase.name, "closed", 0.0, phase.seconds, self._closed)
        elif phase.kind == "open":
            await self._measured(phase.name, "open", phase.rate, phase.seconds, self._open)
        elif phase.kind == "step":
            await self._step(phase)
        else:
            await self._measured(phase.name, "heartbeats", 0.0, phase.seconds, self._heartbeats)

    async def _measured(
        self, name: str, kind: str, rate: float, seconds: float, body: PhaseBody
    ) -> PhaseStats:
        st = PhaseStats(name, kind, time.monotonic_ns(), offered_rate=rate)
        self.results[name] = st
        cpu = CpuMeter(self.cpu_pids)
        bar = self._bar(int(seconds), f"{name} ({kind}{f' {rate:g}/s' if rate else ''})")
        ticker = asyncio.create_task(self._tick(bar, st)) if bar else None
        cpu.start()
        t = time.monotonic()
        try:
            await body(st, seconds)
        finally:
            st.seconds = time.monotonic() - t
            st.cpu_s = cpu.stop()
            if ticker:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            if bar:
                bar.close()
        await self._drain(st)
        if kind == "closed" and self.redis is not None:
            await self._read_hops()
        return st

    async def _tick(self, bar: tqdm, st: PhaseStats) -> None:
        start = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            bar.n = min(bar.total, int(time.monotonic() - start))
            p99 = st.dispatch.percentile_ms(99)
            bar.set_postfix(sent=st.sent, done=st.completed, p99_ms=p99, refresh=False)
            bar.refresh()

    async def _drain(self, st: PhaseStats) -> None:
        """Give what is still in flight ``drain_s`` to come back; the rest is unanswered,
        and each adds the time it waited so far as its sample (:mod:`lingua_bench.rules`)."""
        deadline = time.monotonic() + self.cfg.drain_s
        while time.monotonic() < deadline:
            if not any(f.phase is st for f in self.inflight.values()):
                return
            await asyncio.sleep(0.05)
        stale = [k for k, f in self.inflight.items() if f.phase is st]
        st.unanswered += len(stale)
        now = time.monotonic_ns()
        for k in stale:
            f = self.inflight.pop(k)
            if not f.assigned:
                st.dispatch.record_ns(now - f.mono_ns, now)
            st.roundtrip.record_ns(now - f.mono_ns, now)

    async def _send(
        self, st: PhaseStats, s: BenchSession, track: bool = False, due_ns: int | None = None
    ) -> InFlight:
        """Send one utterance; its latencies count from ``due_ns`` (the scheduled send time,
        monotonic ns) when given, else from now (the rulebook, :mod:`lingua_bench.rules`)."""
        index, frame = s.utterance_frame()
        mono, wall = time.monotonic_ns(), time.time_ns() / 1e6
        if due_ns is not None and due_ns < mono:
            wall -= (mono - due_ns) / 1e6  # the wall clock of the same (scheduled) moment
            mono = due_ns
        f = InFlight(st, mono, wall)
        if track:
            f.done = asyncio.get_running_loop().create_future()
        if st.kind == "closed" and len(self.hops) + 1 < HOP_SAMPLES:
            f.hop = {"client_send": wall}
        self.inflight[(s.session_id, index)] = f
        st.sent += 1
        assert s.ws is not None
        await s.ws.send(frame)
        return f

    async def _closed(self, st: PhaseStats, seconds: float) -> None:
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            s = self.sessions[k % len(self.sessions)]
            k += 1
            f = await self._send(st, s, track=True)
            assert f.done is not None
            try:
                await asyncio.wait_for(f.done, 10)
            except TimeoutError:
                st.error("bench_timeout")

    async def _open(self, st: PhaseStats, seconds: float) -> None:
        rate = st.offered_rate
        start_ns = time.monotonic_ns()
        total = int(rate * seconds)
        n = len(self.sessions)
        for k in range(total):
            due = scheduled_ns(start_ns, k, rate)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic_ns()
            st.send_lag.record_ns(max(0, now - due), now)
            await self._send(st, self.sessions[k % n], due_ns=due)

    async def _step(self, phase: Phase) -> None:
        limit = self.cfg.p99_limit_ms
        tried: list[dict[str, Any]] = []

        async def measure(rate: float) -> bool:
            st = await self._measured(
                f"{phase.name}@{rate:g}", "open", rate, phase.seconds, self._open
            )
            ok = st.held(limit)
            tried.append({"rate": rate, "held": ok, "p99_ms": st.dispatch.percentile_ms(99)})
            return ok

        self.max_sustained[phase.name], _ = await search_max_rate(
            measure, phase, splits=SEARCH_SPLITS
        )
        self.step_log[phase.name] = tried

    async def _heartbeats(self, st: PhaseStats, seconds: float) -> None:
        assert self.redis is not None and self.keys is not None
        sample = self.fleet.sample(self.cfg.lag_sample)
        sampler = ApplyLagSampler(self.redis, self.keys, sample)
        rereg0 = {n.node_id: n.reregisters for n in self.fleet.nodes}
        disc0 = self.fleet.disconnects
        beats0 = self.fleet.beats_sent
        task = asyncio.create_task(sampler.run())
        try:
            await asyncio.sleep(seconds)
        finally:
            sampler.stop()
            # it ends its round; never wait on a cancellation (see ApplyLagSampler.run)
            done, _ = await asyncio.wait({task}, timeout=10)
            for t in done:
                t.exception()  # a failed poll ends the sampling, not the phase (as before)
            if not done:
                task.cancel()
        rereg = {n.node_id for n in self.fleet.nodes if n.reregisters > rereg0[n.node_id]}
        missing = await self._missing_records()
        st.extra["heartbeats"] = {
            "nodes": len(self.fleet.nodes),
            "interval_ms": self.cfg.heartbeat_ms,
            "beats_sent": self.fleet.beats_sent - beats0,
            "apply_lag_observed": sampler.observed.export(),
            "apply_lag_stamped": sampler.stamped.summary(),
            "lag_sampled_nodes": len(sample),
            "lag_unmatched": sampler.unmatched,
            "false_expiries": len(rereg | missing),
            "reregister_requests": len(rereg),
            "records_missing_at_end": len(missing),
            "disconnects": self.fleet.disconnects - disc0,
            "generator_max_backlog_ms": round(self.fleet.max_backlog_ms, 1),
        }

    async def _missing_records(self) -> set[str]:
        assert self.redis is not None and self.keys is not None
        ids = [n.node_id for n in self.fleet.nodes]
        missing: set[str] = set()
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for node_id in chunk:
                    pipe.exists(self.keys.node(node_id))
                found = await pipe.execute()
            missing |= {nid for nid, ok in zip(chunk, found, strict=True) if not ok}
        return missing

    async def _read_hops(self) -> None:
        """Service-side stamps of the sampled jobs (ms wall clocks of the same host)."""
        assert self.redis is not None and self.keys is not None
        todo = [h for h in self.hops if "job_id" in h and "received_at_ms" not in h]
        if not todo:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for h in todo:
                pipe.hmget(self.keys.job(h["job_id"]), *HOP_FIELDS)
            rows = await pipe.execute()
        for h, row in zip(todo, rows, strict=True):
            for name, v in zip(HOP_FIELDS, row, strict=True):
                if v is not None:
                    # services stamp int(time.time() * 1000): a floor, on average 0.5 ms early
                    h[name] = float(v) + 0.5

    # -- output ---------------------------------------------------------------------------
    def _bar(self, total: int, desc: str) -> tqdm | None:
        if not self.cfg.progress:
            return None
        unit = "node" if "nodes" in desc else "s"
        return tqdm(total=total, desc=desc, file=sys.stderr, unit=unit)

    def report(self, reg_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": {
                "nodes": self.cfg.nodes,
                "sessions": self.cfg.sessions,
                "heartbeat_ms": self.cfg.heartbeat_ms,
                "capacity": self.cfg.capacity,
                "audio_ms": self.cfg.audio_ms,
                "pair": f"{self.cfg.src}->{self.cfg.tgt}",
                "phases": [p.__dict__ for p in self.cfg.phases],
                "p99_limit_ms": self.cfg.p99_limit_ms,
            },
            "registration": {
                "nodes": self.cfg.nodes,
                "seconds": round(reg_s, 2),
                "per_s": round(self.cfg.nodes / reg_s, 1) if reg_s else None,
                "incomplete": (
                    None
                    if self.incomplete is None
                    else {
                        "registered": self.incomplete.registered,
                        "deadline_s": self.cfg.register_deadline_s,
                    }
                ),
            },
            "phases": {name: st.export() for name, st in self.results.items()},
            "max_sustained_per_s": self.max_sustained,
            "steps": self.step_log,
            "hops": hop_breakdown(self.hops),
            "node_errors": self.fleet.errors,
        }
        return out


def hop_breakdown(hops: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and median of each hop of the job path, in ms, over the sampled jobs.

    The services stamp whole milliseconds; averaged over many jobs whose phase against the
    millisecond is random, the means are unbiased even where a hop is far below 1 ms.
    """
    legs = {
        "client -> gateway (ws, parse)": ("client_send", "received_at_ms"),
        "gateway -> dispatcher (publish, broker, consume)": ("received_at_ms", "created_at"),
        "job_create (Redis)": ("created_at", "assigned_at"),
        "select_node + job_assign to node (Redis, broker, gateway, ws)": (
            "assigned_at",
            "node_recv",
        ),
        "node answers -> job finished (ws, gateway, broker, ack + finish scripts)": (
            "node_recv",
            "finished_at",
        ),
        "finished -> client (broker, gateway, ws)": ("finished_at", "client_recv"),
    }
    full = [h for h in hops if all(k in h for k in ("client_send", "client_recv", *HOP_FIELDS))]
    out: dict[str, Any] = {"jobs": len(full), "legs_ms": {}}
    if not full:
        return out
    for name, (a, b) in legs.items():
        vals = sorted(h[b] - h[a] for h in full)
        out["legs_ms"][name] = {
            "mean": round(sum(vals) / len(vals), 3),
            "p50": round(vals[len(vals) // 2], 3),
        }
    total = sorted(h["client_recv"] - h["client_send"] for h in full)
    out["roundtrip_mean_ms"] = round(sum(total) / len(total), 3)
    return out


def parse_watch(items: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for item in items:
        name, sep, pid = item.partition("=")
        if not sep or not pid.isdigit():
            raise argparse.ArgumentTypeError(f"--watch {item!r}: expected NAME=PID")
        out.setdefault(name, []).append(int(pid))
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lingua_bench.loadgen",
        description="Simulated nodes and client sessions through a real gateway (loopback only).",
    )
    ap.add_argument("--gateway", required=True, help="ws://127.0.0.1:PORT of the gateway")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--phase", action="append", default=[], help="NAME=KIND:ARGS (repeatable)")
    ap.add_argument("--heartbeat-ms", type=int, default=15_000, help="node heartbeat interval")
    ap.add_argument("--capacity", type=int, default=4, help="job slots per node")
    ap.add_argument("--audio-ms", type=int, default=100, help="PCM16 audio per utterance")
    ap.add_argument("--redis-url", help="for apply lag, expiries and per-hop stamps")
    ap.add_argument("--cell", help="the services' LINGUA_CELL (with --redis-url)")
    ap.add_argument("--lag-sample", type=int, default=200, help="nodes polled for apply lag")
    ap.add_argument("--p99-limit-ms", type=float, default=50.0, help="step phases: limit")
    ap.add_argument("--watch", action="append", default=[], help="NAME=PID: CPU per phase")
    ap.add_argument("--id-prefix", default="bn", help="node ids are PREFIX-00000...")
    ap.add_argument(
        "--register-per-s",
        type=float,
        help="pace new node connections (default: as fast as the gateway answers)",
    )
    ap.add_argument(
        "--register-deadline-s",
        type=float,
        help="stop waiting for registrations after this long and report them incomplete",
    )
    ap.add_argument("--out", type=Path, help="JSON report (default: stdout)")
    ap.add_argument("--plots", type=Path, help="directory for PNG plots")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = LoadConfig(
            gateway=args.gateway,
            nodes=args.nodes,
            sessions=args.sessions,
            phases=[parse_phase(p) for p in args.phase],
            heartbeat_ms=args.heartbeat_ms,
            capacity=args.capacity,
            audio_ms=args.audio_ms,
            redis_url=args.redis_url,
            cell=args.cell,
            lag_sample=args.lag_sample,
            p99_limit_ms=args.p99_limit_ms,
            watch=parse_watch(args.watch),
            progress=not args.no_progress,
            id_prefix=args.id_prefix,
            register_per_s=args.register_per_s,
            register_deadline_s=args.register_deadline_s,
        )
        gen = LoadGen(cfg)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    from lingua_shared.runtime import install_uvloop

    install_uvloop()
    report = asyncio.run(gen.run())
    write_report(report, args.out)
    if args.plots:
        from lingua_bench.plots import plot_loadgen

        for path in plot_loadgen(report, args.plots):
            print(f"loadgen: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
