"""Pure parts of the bench: phase specs, the loopback guard, targets, histograms."""

from __future__ import annotations

import asyncio
import time

import pytest

from lingua_bench.fleet import cpu_to_seq, seq_to_cpu
from lingua_bench.guard import NotLoopback, require_loopback
from lingua_bench.hist import Latency
from lingua_bench.loadgen import hop_breakdown
from lingua_bench.phases import PhaseSpecError, parse_phase, search_max_rate
from lingua_bench.targets import compute, errors_target


def _search(
    capacity: float, spec: str = "s=step:100:1.3:3000:6", stalls: frozenset[float] = frozenset()
) -> tuple[float, list[float]]:
    """The rate search against a system that holds every rate up to ``capacity``, except
    that the first try of each rate in ``stalls`` is spoilt by a stall."""
    stalled: set[float] = set()

    async def measure(rate: float) -> bool:
        if rate in stalls and rate not in stalled:
            stalled.add(rate)
            return False
        return rate <= capacity

    best, tried = asyncio.run(search_max_rate(measure, parse_phase(spec)))
    return best, [rate for rate, _ in tried]


def test_rate_search_goes_up_then_splits_the_last_gap() -> None:
    best, tried = _search(300)
    # every failing rate is tried twice before it counts as failed
    assert tried == [100, 130, 169, 220, 286, 372, 372, 329, 329]
    assert best == 286  # 329 failed: the halfway step does not hold either


def test_rate_search_goes_down_when_the_start_fails() -> None:
    best, tried = _search(40)
    assert tried == [100, 100, 77, 77, 59, 59, 45, 45, 35, 40]
    assert best == 40
    assert _search(1) == (
        0.0,
        [r for r in (100, 77, 59, 45, 35, 27, 21, 16, 12, 9, 7, 5) for _ in "12"],
    )


def test_one_stall_does_not_lower_the_figure() -> None:
    """A rate the system carries, spoilt once by a stall, still counts: the floor's first
    step once failed that way and put its maximum at 75/s instead of ~750/s."""
    best, tried = _search(300, stalls=frozenset({100.0, 220.0}))
    assert best == 286
    assert tried[:6] == [100, 100, 130, 169, 220, 220]


def test_rate_search_stops_at_the_maximum() -> None:
    assert _search(10_000, "s=step:100:2:400:1") == (400, [100, 200, 400])


def test_rate_search_starts_no_step_past_its_deadline() -> None:
    async def measure(rate: float) -> bool:
        return True

    phase = parse_phase("s=step:100:2:1000000:5")
    best, tried = asyncio.run(search_max_rate(measure, phase, deadline=time.monotonic() + 2))
    assert (best, tried) == (0.0, [])
    calls: list[float] = []

    async def slow(rate: float) -> bool:
        calls.append(rate)
        await asyncio.sleep(0.05)
        return True

    quick = parse_phase("s=step:100:2:1000000:0.04")
    best, tried = asyncio.run(search_max_rate(slow, quick, deadline=time.monotonic() + 0.2))
    assert 1 <= len(calls) <= 4 and best == calls[-1]


def test_phase_specs_parse() -> None:
    assert parse_phase("low=closed:5").kind == "closed"
    p = parse_phase("r=open:200:10")
    assert (p.rate, p.seconds) == (200, 10)
    s = parse_phase("s=step:100:1.5:1000:4")
    assert (s.start_rate, s.factor, s.max_rate, s.seconds) == (100, 1.5, 1000, 4)


@pytest.mark.parametrize(
    "bad", ["closed:5", "x=warp:1", "x=open:200", "x=open:a:1", "x=step:100:1:50:1", "x=closed:0"]
)
def test_bad_phase_specs_are_typed_errors(bad: str) -> None:
    with pytest.raises(PhaseSpecError):
        parse_phase(bad)


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:5010",
        "redis://localhost:6379/1",
        "amqp://g:g@127.0.0.5:5672/",
        "ws://[::1]:80",
    ],
)
def test_loopback_accepted(url: str) -> None:
    assert require_loopback(url) == url


@pytest.mark.parametrize("url", ["ws://10.0.0.1:5010", "ws://example.com/", "ws:///x", "nope"])
def test_non_loopback_refused(url: str) -> None:
    with pytest.raises(NotLoopback):
        require_loopback(url)


def test_heartbeat_sequence_round_trips_through_cpu_percent() -> None:
    for seq in (1, 9, 10, 999, 1000, 1234):
        cpu = seq_to_cpu(seq)
        assert 0 <= cpu < 100
        assert cpu_to_seq(float(str(cpu))) == seq % 1000


def test_latency_percentiles_and_timeline() -> None:
    lat = Latency("x", 0)
    for i in range(1, 101):
        lat.record_ns(i * 1_000_000, at_ns=(i % 3) * 1_000_000_000)
    s = lat.summary()
    assert s["count"] == 100
    assert 49.5 <= s["p50_ms"] <= 50.5 and 98.5 <= s["p99_ms"] <= 99.5
    assert [p["t_s"] for p in lat.timeline()] == [0.0, 1.0, 2.0]
    assert lat.cdf()[-1][1] == 1.0


def test_targets_compare_within_the_run_and_say_what_is_missing() -> None:
    doc = {
        "floor": {"low_load": {"p50_ms": 1.0}, "max_sustained_per_s": 1000},
        "dispatch": {
            "low_load": {"p50_ms": 2.5},
            "at_200_per_s": {"p99_ms": 9.0},
            "max_sustained_per_s": 600,
        },
        "heartbeats": {"nodes": 10000, "false_expiries": 0, "apply_lag_p99_ms": 200},
    }
    t = compute(doc)
    assert t["dispatch_low_load_p50_vs_floor"] == {
        "value": 2.5,
        "limit": 1.5,
        "rule": t["dispatch_low_load_p50_vs_floor"]["rule"],
        "met": False,
    }
    assert t["dispatch_max_sustained_vs_floor"]["met"] is True  # 600 >= 0.5 x 1000
    assert t["heartbeats_false_expiries"]["met"] is True
    sel = t["select_shards_400_vs_1"]
    assert sel["met"] is None
    assert sel["missing"] == ["select.shards_400.p99_us", "select.shards_1.p99_us"]
    doc["select"] = {"shards_1": {"p99_us": 100.0}, "shards_400": {"p99_us": 151.0}}
    assert compute(doc)["select_shards_400_vs_1"]["met"] is False
    assert errors_target({})["met"] is True
    assert errors_target({"heartbeats": "fell back"})["met"] is False


def test_hop_breakdown_means_per_leg() -> None:
    hop = {
        "client_send": 0.0,
        "received_at_ms": 1.0,
        "created_at": 2.0,
        "assigned_at": 2.5,
        "node_recv": 4.0,
        "acked_at": 4.5,
        "finished_at": 5.0,
        "client_recv": 7.0,
    }
    out = hop_breakdown([hop, {**hop, "client_recv": 9.0}, {"client_send": 1.0}])
    assert out["jobs"] == 2
    legs = out["legs_ms"]
    assert legs["client -> gateway (ws, parse)"]["mean"] == 1.0
    assert legs["finished -> client (broker, gateway, ws)"]["mean"] == 3.0
    assert out["roundtrip_mean_ms"] == 8.0


def test_registrations_past_their_deadline_are_reported_not_crashed() -> None:
    """A stack that queues registrations (here: one that never acks) ends the generator's
    wait at its deadline with a report that says how many registered, and no phase runs."""
    from websockets.asyncio.server import ServerConnection, serve

    from lingua_bench.fleet import RegistrationIncomplete
    from lingua_bench.loadgen import LoadConfig, LoadGen

    async def never_ack(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    async def go() -> tuple[dict, RegistrationIncomplete]:
        async with serve(never_ack, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            cfg = LoadConfig(
                gateway=f"ws://127.0.0.1:{port}",
                nodes=3,
                sessions=1,
                phases=[parse_phase("low=closed:1")],
                progress=False,
                register_deadline_s=0.5,
            )
            t0 = time.monotonic()
            report = await LoadGen(cfg).run()
            assert time.monotonic() - t0 < 10
            gen = LoadGen(cfg)
            with pytest.raises(RegistrationIncomplete) as raised:
                await gen.fleet.connect_all(None, 0.3)
            await gen.fleet.close()
        return report, raised.value

    report, exc = asyncio.run(go())
    assert report["registration"]["incomplete"] == {"registered": 0, "deadline_s": 0.5}
    assert report["phases"] == {}
    assert exc.registered == 0 and exc.nodes == 3 and "0 of 3 nodes registered" in str(exc)


def test_ws_frame_cost_reports_the_servers_cpu_per_frame(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from lingua_bench import ws_frame_cost

    out = tmp_path / "ws.json"
    args = ["--connections", "3", "--rate", "200", "--seconds", "1", "--out", str(out)]
    assert ws_frame_cost.main(args) == 0
    report = json.loads(out.read_text())
    for mode in ws_frame_cost.MODES:
        m = report["modes"][mode]
        assert m["frames"] >= 150  # paced at 200/s for 1 s
        assert m["server_cpu_s"] >= 0 and m["us_per_frame"] is not None
