"""``lingua_bench.cells_capacity`` runs end to end for a moment on real redis-server processes
(one server and a three-master cluster) and writes every figure; figures are not asserted,
only that each layout's load reached the servers it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lingua_bench import cells_capacity

pytestmark = pytest.mark.integration


@pytest.mark.timeout(200)
def test_every_layout_reports_rates_and_each_servers_cpu(tmp_path: Path) -> None:
    out = tmp_path / "cells.json"
    assert cells_capacity.main(["--seconds", "0.5", "--drivers", "3", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    layouts = doc["layouts"]
    assert set(layouts) == {"single_1cell", "single_3cells", "cluster_3cells"}
    for name, layout in layouts.items():
        assert layout["select"]["jobs_per_s"] > 0, name
        assert layout["heartbeat"]["beats_per_s"] > 0, name
        cpu = layout["select"]["redis_cpu_per_s"]
        assert len(cpu) == layout["servers"], name
    # the cluster layout's three cells are on three masters, and each master worked
    assert layouts["cluster_3cells"]["servers"] == 3
    assert all(c > 0 for c in layouts["cluster_3cells"]["heartbeat"]["redis_cpu_per_s"])
    assert set(doc["ratio_cluster_to_single"]) == {"select", "heartbeat"}
