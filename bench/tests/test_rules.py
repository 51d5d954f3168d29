"""The rulebook (lingua_bench.rules), with fakes: latency from the scheduled send time, no
loss allowance, and a crashed or fallen-back scenario failing the run."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from lingua_bench import __main__ as bench_main
from lingua_bench import floor, scenarios
from lingua_bench.loadgen import LoadConfig, LoadGen
from lingua_bench.phases import PhaseStats, parse_phase
from lingua_bench.rules import heartbeat_errors, scheduled_ns, step_holds


class FakeWs:
    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.sent: list[int] = []

    async def send(self, frame: Any) -> None:
        self.sent.append(time.monotonic_ns())
        if len(self.sent) == 1:
            await asyncio.sleep(self.stall_s)  # the generator falls behind its schedule


class FakeSession:
    def __init__(self, stall_s: float = 0.0) -> None:
        self.session_id = "s1"
        self.ws = FakeWs(stall_s)
        self.index = 0

    def utterance_frame(self) -> tuple[int, bytes]:
        self.index += 1
        return self.index, b"frame"


def loadgen(drain_s: float = 3.0) -> LoadGen:
    cfg = LoadConfig(gateway="ws://127.0.0.1:1", sessions=1, phases=[parse_phase("a=open:100:1")])
    cfg.drain_s = drain_s
    return LoadGen(cfg)


def test_open_loop_latency_counts_from_the_scheduled_send_time() -> None:
    gen = loadgen()
    session = FakeSession(stall_s=0.2)
    gen.sessions = [session]  # type: ignore[list-item]
    st = PhaseStats("a", "open", time.monotonic_ns(), offered_rate=100)
    asyncio.run(gen._open(st, 0.1))
    starts = [f.mono_ns for f in gen.inflight.values()]
    assert len(starts) == 10
    # the first send stalled 200 ms, so the next nine went out late and together; their
    # latencies still count from 10 ms apart, as scheduled
    assert [b - a for a, b in itertools.pairwise(starts)] == [
        scheduled_ns(0, k + 1, 100) - scheduled_ns(0, k, 100) for k in range(9)
    ]
    sent = session.ws.sent
    assert sent[1] - sent[0] >= 150_000_000
    assert st.send_lag.percentile_ms(99) >= 150
    # a job assigned right after its late send has waited since its due time
    now = time.monotonic_ns()
    for (sid, idx), _ in list(gen.inflight.items()):
        gen.on_assign(None, {"session_id": sid, "utterance_index": idx}, now)  # type: ignore[arg-type]
    assert st.dispatch.percentile_ms(50) >= 150


def test_a_lost_job_fails_its_step_and_adds_a_sample() -> None:
    st = PhaseStats("a", "open", time.monotonic_ns(), offered_rate=100)
    st.sent, st.completed = 1000, 999
    for _ in range(999):
        st.dispatch.record_ns(1_000_000, time.monotonic_ns())
    assert not st.held(50.0)  # one in a thousand unanswered: no allowance
    st.completed = 1000
    assert st.held(50.0)

    gen = loadgen(drain_s=0.05)
    session = FakeSession()
    gen.sessions = [session]  # type: ignore[list-item]
    st = PhaseStats("b", "closed", time.monotonic_ns())

    async def lose_one() -> None:
        await gen._send(st, session)  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        await gen._drain(st)

    asyncio.run(lose_one())
    assert st.unanswered == 1 and not gen.inflight
    # the unanswered job counts: a dispatch and a round-trip sample of the time it waited
    assert st.dispatch.count == 1 and st.dispatch.percentile_ms(50) >= 50
    assert st.roundtrip.count == 1
    assert not st.held(1000.0)


def test_the_floor_steps_by_the_same_rules() -> None:
    assert step_holds(sent=10, answered=10, p99_ms=1.0, limit_ms=50)
    assert not step_holds(sent=10, answered=9, p99_ms=1.0, limit_ms=50)
    assert not step_holds(sent=10, answered=10, p99_ms=1.0, errors=1, limit_ms=50)
    assert not step_holds(sent=10, answered=10, p99_ms=51.0, limit_ms=50)
    assert not step_holds(sent=0, answered=0, p99_ms=None, limit_ms=50)

    client = floor.Client()
    step = floor.Step(100)
    for i in range(3):
        client.pending[i] = (time.perf_counter_ns() - 80_000_000, step, None)
        step.sent += 1
    client.pending[3] = (time.perf_counter_ns(), floor.Step(200), None)  # another step's
    step.received = 2
    client.pending.pop(0), client.pending.pop(1)
    client.give_up(step)
    assert step.unanswered == 1 and list(client.pending) == [3]
    assert step.lat.count == 1 and step.lat.ms(50) >= 80
    assert not floor.holds(step)


def test_heartbeat_fallback_and_crashes_are_errors() -> None:
    held = {"nodes": 10_000, "held": True}
    assert heartbeat_errors([held, {"nodes": 14_000, "held": False}], 10_000) == []
    fell = heartbeat_errors(
        [{"nodes": 10_000, "held": False, "error": "registration refused"},
         {"nodes": 5_000, "held": True}],
        10_000,
    )  # fmt: skip
    assert len(fell) == 1 and "registration refused" in fell[0] and "fell back to 5000" in fell[0]
    crashed = heartbeat_errors([held, {"nodes": 14_000, "held": False, "error": "boom"}], 10_000)
    assert crashed == ["14000 nodes crashed: boom"]
    assert heartbeat_errors([{"nodes": 10_000, "skipped": "no time"}], 10_000)
    # a larger count whose registrations queued past their deadline ends the search: a
    # capacity limit, not a crash; the required count's is an error, naming why
    slow = {"nodes": 14_000, "held": False, "reason": "registration incomplete: 9000 of 14000"}
    assert heartbeat_errors([held, slow], 10_000) == []
    first_slow = heartbeat_errors([{**slow, "nodes": 10_000}], 10_000)
    assert len(first_slow) == 1 and "registration incomplete" in first_slow[0]


def run_main(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = bench_main.main(["--out-dir", str(tmp_path), "--no-progress", "--quick", *args])
    return code, json.loads((tmp_path / "latest.json").read_text())


def test_a_crashed_scenario_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(name: str, **kw: Any) -> dict[str, Any]:
        raise RuntimeError("floor server died")

    monkeypatch.setattr(scenarios, "module_scenario", crash)
    code, doc = run_main(tmp_path, "--only", "floor")
    assert code == 1
    assert "floor server died" in doc["meta"]["errors"]["floor"]


def test_a_fallen_back_heartbeat_scenario_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = [
        {"nodes": 200, "held": False, "error": "loadgen exited with 1"},
        {"nodes": 50, "held": True, "apply_lag_p99_ms": 20.0, "false_expiries": 0,
         "cpu_s": {}},
    ]  # fmt: skip
    monkeypatch.setattr(
        scenarios, "heartbeats", lambda *a, **k: {"best": attempts[1], "attempts": attempts}
    )
    code, doc = run_main(tmp_path, "--only", "heartbeats")
    assert code == 1
    assert "fell back to 50" in doc["meta"]["errors"]["heartbeats"]
    assert doc["heartbeats"]["nodes"] == 50  # the figure is still reported

    attempts[0] = {**attempts[1], "nodes": 200}
    code, doc = run_main(tmp_path, "--only", "heartbeats")
    assert code == 0 and doc["meta"]["errors"] == {}
