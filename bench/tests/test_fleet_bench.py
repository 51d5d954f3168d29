"""The fleet scenario writes its fields (figures never asserted), and its target needs the
count, no failure, no false expiry and the hog all at once."""

from __future__ import annotations

import pytest

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
    hog = doc["details"]["fleet"]["hog"]
    assert hog["seconds"] > 0 and hog["alive_at_end"] is True
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
