"""The fleet scenario writes its fields (figures never asserted) from a fleet spread over two
gateway replicas and two generator processes, its target needs the count, no failure, no false
expiry and the hog all at once, and the number of processes follows the open-file limit."""

from __future__ import annotations

import argparse

import pytest

from lingua_bench.fleet_bench import FD_HEADROOM, merge_reports, parse_shard, processes_for
from lingua_bench.stack import replica_name, service_of
from lingua_bench.targets import compute


@pytest.mark.integration
@pytest.mark.timeout(200)
def test_quick_fleet_writes_its_fields(quick_bench) -> None:
    doc = quick_bench("fleet")
    fleet = doc["fleet"]
    assert isinstance(fleet["lingua_nodes"], int) and fleet["lingua_nodes"] > 0
    assert isinstance(fleet["lingua_registration_failures"], int)
    assert isinstance(fleet["false_expiries"], int)
    assert isinstance(fleet["loaded"], bool)
    details = doc["details"]["fleet"]
    hog = details["hog"]
    assert hog["seconds"] > 0 and hog["alive_at_end"] is True
    # the split: two replicas, each with its half of the nodes, fed by two generators
    gateways = details["gateways"]
    assert [g["name"] for g in gateways] == ["gateway", "gateway-2"]
    assert all(g["node_registers_received"] > 0 for g in gateways)
    assert all(g["nodes_at_end_of_hold"] > 0 for g in gateways)
    assert [g["shard"] for g in details["generators"]] == [0, 1]
    assert sum(g["nodes"] for g in details["generators"]) == details["size"]["nodes"]
    assert "fleet_lingua_nodes" in doc["targets"]
    assert not doc["meta"]["errors"]


@pytest.mark.parametrize(
    ("fleet", "met"),
    [
        ({"lingua_nodes": 20_000, "lingua_registration_failures": 0, "false_expiries": 0,
          "loaded": True}, True),
        ({"lingua_nodes": 20_000, "lingua_registration_failures": 1, "false_expiries": 0,
          "loaded": True}, False),
        ({"lingua_nodes": 20_000, "lingua_registration_failures": 0, "false_expiries": 3,
          "loaded": True}, False),
        ({"lingua_nodes": 20_000, "lingua_registration_failures": 0, "false_expiries": 0,
          "loaded": False}, False),
        ({"lingua_nodes": 19_999, "lingua_registration_failures": 0, "false_expiries": 0,
          "loaded": True}, False),
        ({"lingua_nodes": None, "lingua_registration_failures": None, "false_expiries": None,
          "loaded": None}, None),
    ],
)  # fmt: skip
def test_the_fleet_target_needs_every_condition(fleet: dict, met: bool | None) -> None:
    assert compute({"fleet": fleet})["fleet_lingua_nodes"]["met"] is met


@pytest.mark.parametrize(
    ("nodes", "hard", "count"),
    [
        (200, 20_000, 2),  # the quick size takes the same path
        (20_000, 20_000, 2),
        (20_001, 20_000, 3),
        (20_000, 10_000 + FD_HEADROOM, 2),
        (20_000, 5_000 + FD_HEADROOM, 4),  # a lower limit: more, smaller processes
        (100_000, 1 << 20, 10),
    ],
)  # fmt: skip
def test_one_gateway_and_generator_per_ten_thousand_nodes(
    nodes: int, hard: int, count: int
) -> None:
    assert processes_for(nodes, hard) == count


def test_bad_sizes_and_shards_are_refused() -> None:
    with pytest.raises(ValueError):
        processes_for(0, 20_000)
    with pytest.raises(RuntimeError):
        processes_for(100, FD_HEADROOM)
    assert parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "1", "a/b", "0/0", "-1/2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(bad)


def test_the_generators_reports_merge_into_one_fleet() -> None:
    def report(shard: int, acks: list[float], failures: int, cpu: dict) -> dict:
        return {
            "shard": shard, "nodes": 3, "registered": len(acks), "failures": failures,
            "failed_sample": {f"n{shard}": "x"} if failures else {},
            "node_errors": {"E": failures}, "registration_s": 10.0 + shard, "ack_s": acks,
            "hold_s": 60.0, "beats_sent": 5, "disconnects_during_hold": shard,
            "records_missing_at_end": 1, "generator_max_backlog_ms": 5.0 * (2 - shard),
            "gateway_nodes_at_end": {}, "cpu_s": cpu,
        }  # fmt: skip

    merged = merge_reports(
        [
            report(0, [0.1, 0.3, 0.2], 0, {"gateway": 4.0, "generator": 1.0}),
            report(1, [0.4, 0.5], 1, {"generator": 2.0}),
        ]
    )
    assert merged["nodes"] == 6 and merged["registered"] == 5 and merged["failures"] == 1
    assert merged["failed_sample"] == {"n1": "x"} and merged["node_errors"] == {"E": 1}
    assert merged["registration_s"] == 11.0 and merged["generator_max_backlog_ms"] == 10.0
    assert merged["ack_wait_s"] == {"p50": 0.3, "p99": 0.5, "max": 0.5}
    assert merged["records_missing_at_end"] == 2 and merged["disconnects_during_hold"] == 1
    assert merged["cpu_s"] == {"gateway": 4.0, "generator": 3.0}


def test_replicas_are_named_after_their_service() -> None:
    assert [replica_name("gateway", k) for k in (1, 2, 3)] == ["gateway", "gateway-2", "gateway-3"]
    assert [service_of(n) for n in ("gateway", "gateway-2", "node-manager", "stats")] == [
        "gateway",
        "gateway",
        "node-manager",
        "stats",
    ]
