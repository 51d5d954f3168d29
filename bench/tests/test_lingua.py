"""The lingua scenario: its pure parts (node answer order, what makes a step hold, CPU per
utterance, the targets, the web client's frames), the CPU meter it reads, and one step
against a real stack with a node that withholds results."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lingua_bench import lingua
from lingua_bench.fleet import Fleet, FleetSpec
from lingua_bench.lingua import LinguaFleet, LinguaGen, LinguaSizes, StepStats
from lingua_bench.procstat import CpuMeter
from lingua_bench.targets import compute
from lingua_shared.protocol import webclient


def _fleet() -> LinguaFleet:
    spec = FleetSpec(count=2, gateway_url="ws://127.0.0.1:1/ws/node", profile="lingua")
    return LinguaFleet(spec, lambda *a: None, random.Random(1))


def test_a_sessions_answers_leave_a_node_in_the_order_its_jobs_came() -> None:
    f = _fleet()
    # a slow job of session s1, then a quick one of the same session: the quick one waits
    assert f.answer_time("n1", "s1", 10.0, 2.0) == 12.0
    assert f.answer_time("n1", "s1", 10.5, 0.3) == pytest.approx(12.001)
    # another session on the same node, and the same session on another node, do not wait
    assert f.answer_time("n1", "s2", 10.5, 0.3) == 10.8
    assert f.answer_time("n2", "s1", 10.5, 0.3) == 10.8


def test_lingua_nodes_register_and_beat_as_linguas_agent() -> None:
    f = Fleet(FleetSpec(count=1, gateway_url="ws://127.0.0.1:1/ws/node", profile="lingua"), None)
    reg = json.loads(f.nodes[0].register_frame)
    for ours in ("acks_jobs", "region", "gpu_tier", "max_concurrent_jobs", "heartbeat_interval_ms"):
        assert ours not in reg
    beat = json.loads(f.nodes[0].heartbeat_frame(1))
    assert set(beat["language_capabilities"]["asr_languages"]) >= {"en", "zh"}
    std = Fleet(FleetSpec(count=1, gateway_url="ws://127.0.0.1:1/ws/node"), None)
    assert json.loads(std.nodes[0].register_frame)["acks_jobs"] is True


def test_the_web_clients_chunks_and_session() -> None:
    rng = random.Random(3)
    for _ in range(50):
        chunk = lingua.opus_chunk(rng)
        assert 600 <= len(chunk) <= 1000
        pos, packets = 0, 0
        while pos < len(chunk):
            (size,) = struct.unpack_from("<H", chunk, pos)
            assert 40 <= size <= 80  # speech, never the silence the gateway skips
            pos += 2 + size
            packets += 1
        assert pos == len(chunk) and packets == webclient.PACKETS_PER_CHUNK
    init = lingua.session_init()
    assert init["mode"] == "two_way_auto" and init["src_lang"] == "auto"
    assert init["auto_langs"] == ["zh", "en"] and init["tenant_id"] is None
    s = lingua.WebSession(None, "ws://x", rng)  # type: ignore[arg-type]
    s.session_id = "s-1"
    for final in (False, True):
        frame = json.loads(s._frame("" if final else "AAAA", final))
        assert frame["is_final"] is final and "utterance_index" not in frame
    assert base64.b64decode(json.loads(s._frame("", True))["payload"]) == b""


def _step(sent: int, results: int, missing: int = 0, p99_us: int = 5000) -> StepStats:
    st = StepStats("s", 10, time.monotonic_ns())
    st.sent, st.results = sent, results
    if missing:
        st.missing["no_result"] = missing
    for _ in range(sent):
        st.overhead.record_ns(p99_us * 1000, time.monotonic_ns())
    return st


def test_a_step_holds_only_with_every_utterance_answered_and_p99_within_the_limit() -> None:
    assert _step(100, 95, missing=5).held()  # missing_result answers an utterance
    assert not _step(100, 99).held()  # one lost
    # one whose node withheld its result, still open after the drain: answered at the job's
    # deadline, which the run waits for (never answered then: an error of the run)
    withheld = _step(100, 99)
    withheld.awaiting_deadline = 1
    assert withheld.held()
    withheld.results, withheld.late_answered = 100, 1  # answered at its deadline, later
    assert withheld.held()  # the verdict the search acted on stands in the report
    assert not _step(100, 100, p99_us=60_000).held()
    assert not _step(0, 0).held()
    errored = _step(10, 10)
    errored.errors["INTERNAL_ERROR"] = 1
    assert not errored.held()


def test_cpu_per_utterance_is_each_process_over_the_windows_utterances() -> None:
    st = _step(200, 200)
    st.cpu_s = {
        "gateway": 1.0,
        "dispatcher": 0.5,
        "node-manager": 0.1,
        "rabbitmq": 0.3,
        "redis": 0.1,
        "loadgen": 9.0,
    }
    out = lingua.cpu_per_utterance(st)
    assert out == {
        "gateway": 5.0,
        "dispatcher": 2.5,
        "node_manager": 0.5,
        "rabbitmq": 1.5,
        "redis": 0.5,
        "total": 10.0,  # the generator is not the system's cost
    }
    assert lingua.cpu_per_utterance(_step(0, 0)) is None


def test_lingua_targets() -> None:
    doc: dict[str, Any] = {
        "floor": {"low_load": {"p50_ms": 2.0, "p99_ms": 3.0}},
        "peer_celery": {"cpu_ms_per_task": 2.0},
        "lingua": {
            "overhead": {"at_half": {"p50_ms": 5.0, "p99_ms": 12.5}},
            "cpu_ms_per_utterance": {"total": 5.9},
        },
    }
    t = compute(doc)
    cpu, ovh = t["lingua_cpu_per_utterance_vs_peer"], t["lingua_overhead_at_half_p99_vs_floor"]
    assert (cpu["limit"], cpu["met"]) == (6.0, True)
    assert (ovh["limit"], ovh["met"]) == (12.0, False)
    del doc["peer_celery"]
    t = compute(doc)["lingua_cpu_per_utterance_vs_peer"]
    assert t["met"] is None and t["missing"] == ["peer_celery.cpu_ms_per_task"]


def test_cpu_meter_ignores_a_process_that_went_away_in_between() -> None:
    """A short-lived process of a watched name (rabbitmqctl's beam.smp) that exits during
    the phase must not take its lifetime's CPU off the figure."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
    burner = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(60)"])
    try:
        time.sleep(1.0)
        meter = CpuMeter({"rabbitmq": [os.getpid(), burner.pid, 999_999_999]})
        meter.start()
    finally:
        burner.kill()
        burner.wait()
    assert meter.stop().get("rabbitmq", 0.0) >= 0.0


# -- against a real stack ----------------------------------------------------------------
class FirstWithheld(LinguaFleet):
    """Withholds the result of each session's first utterance."""

    def withholds(self, msg: dict[str, Any]) -> bool:
        return msg.get("utterance_index") == 0


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_withheld_result_is_answered_by_missing_result_in_the_drain(
    redis_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """The sessions go on speaking after the window, so the node's answer to the next
    utterance ends the withheld one: the step loses nothing and holds."""
    from lingua_bench.scenarios import with_stack

    sizes = LinguaSizes(
        nodes=4,
        start=2,
        factor=2.0,
        max_sessions=2,
        warmup_s=0.0,
        window_s=7.0,
        drain_s=20.0,
        half_warmup_s=0.0,
        half_window_s=1.0,
        search_budget_s=10.0,
    )

    async def scenario(gateway: str) -> tuple[StepStats, LinguaGen]:
        gen = LinguaGen(lingua.GenConfig(gateway=gateway, sizes=sizes))
        gen.fleet.__class__ = FirstWithheld
        beats = asyncio.create_task(gen.fleet.beat_forever())
        try:
            await gen.fleet.connect_all()
            st = await gen.phase("one", 2, 0.0, sizes.window_s, sizes.drain_s)
        finally:
            beats.cancel()
            for s in gen.sessions:
                await s.close()
            await gen.fleet.close()
        return st, gen

    st, gen = with_stack(
        "lingua-test",
        redis_url,
        amqp_url,
        tmp_path,
        {},
        lambda stack: asyncio.run(scenario(stack.gateway_ws)),
    )
    assert gen.fleet.withheld >= 2  # utterance 0 of both sessions
    assert st.sent >= 2 and st.unanswered == 0 and not st.errors, st.export()
    assert st.missing.get("no_result", 0) >= 1, st.export()
    assert st.answered == st.sent and st.assigned == st.sent


def test_withheld_utterances_are_waited_for_from_their_latest_assignment() -> None:
    """One whose job was assigned again lately (taken back, given to another node) is
    waited for; one whose last assignment is older than the wait is never answered."""
    sizes = LinguaSizes(1, 1, 2.0, 1, 0, 1, 1, 0, 1, 1)
    gen = LinguaGen(lingua.GenConfig(gateway="ws://127.0.0.1:1", sizes=sizes))
    st = StepStats("s", 1, time.monotonic_ns())
    now = time.monotonic_ns()
    old = lingua.Utterance(st, now - 10**9, assigned=True, late=True, job_id="j-old")
    old.last_assign_ns = now - 10**9
    fresh = lingua.Utterance(st, now - 10**9, assigned=True, late=True, job_id="j-fresh")
    fresh.last_assign_ns = now
    gen.utterances = {("s-1", 0): old, ("s-1", 1): fresh}
    gen.late = {("s-1", 0), ("s-1", 1)}

    async def main() -> float:
        t = time.monotonic()
        await gen._await_deadlines(0.5)
        return time.monotonic() - t

    waited = asyncio.run(main())
    assert 0.4 <= waited < 1.5
    assert (st.late_lost, sorted(st.late_lost_jobs)) == (2, ["j-fresh", "j-old"])
    # answered while waited for: not lost
    st2 = StepStats("s2", 1, time.monotonic_ns())
    u = lingua.Utterance(st2, time.monotonic_ns(), assigned=True, late=True, job_id="j-2")
    u.last_assign_ns = time.monotonic_ns()
    gen.utterances = {("s-1", 2): u}
    gen.late = {("s-1", 2)}
    session = lingua.WebSession(gen, "ws://x", random.Random(1))
    session.session_id = "s-1"

    async def answer_soon() -> None:
        waiter = asyncio.create_task(gen._await_deadlines(5.0))
        await asyncio.sleep(0.2)
        msg = {"type": "missing_result", "utterance_index": 2, "reason": "no_result"}
        gen.on_message(session, msg, time.monotonic_ns())
        await waiter

    asyncio.run(answer_soon())
    assert (st2.late_lost, st2.late_answered, st2.missing) == (0, 1, {"no_result": 1})


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_fixed_load_prints_the_cpu_per_utterance_of_each_process(
    redis_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """``--sessions`` without ``--gateway``: its own stack, one phase at that load, the CPU
    figures as JSON on stdout."""
    cmd = [
        sys.executable,
        "-m",
        "lingua_bench.lingua",
        "--sizes=quick",
        "--sessions=2",
        "--seconds=4",
        "--warmup=0.5",
        "--nodes=4",
        f"--redis-url={redis_url}",
        f"--amqp-url={amqp_url}",
        f"--work={tmp_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["sessions"] == 2 and report["nodes"] == 4
    assert report["utterances"] >= 1 and not report["errors"], report
    cpu = report["cpu_ms_per_utterance"]
    assert set(cpu) >= {"gateway", "dispatcher", "node_manager", "total"}
    assert cpu["gateway"] is not None and cpu["total"] >= cpu["gateway"]
