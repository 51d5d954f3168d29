"""Every full run is kept under a name of its own, and the docs' table is generated from
such a file (lingua_bench.doc_table), with fakes in place of the scenarios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lingua_bench import __main__ as bench_main
from lingua_bench import doc_table


def test_kept_name_is_the_utc_date_and_the_cpu_model(tmp_path: Path) -> None:
    machine = {"cpu_model": "Intel(R) Xeon(R) CPU @ 2.20GHz"}
    first = bench_main.kept_path(tmp_path, "2026-12-07T10:00:00Z", machine)
    assert first.name == "2026-12-07-intel-xeon-cpu-2-20ghz.json"
    first.write_text("{}")
    second = bench_main.kept_path(tmp_path, "2026-12-07T11:00:00Z", machine)
    assert second.name == "2026-12-07-intel-xeon-cpu-2-20ghz-2.json"  # no run replaces another
    amd = bench_main.kept_path(tmp_path, "2026-12-08T00:00:00Z", {"cpu_model": "AMD EPYC 7B13"})
    assert amd.name == "2026-12-08-amd-epyc-7b13.json"


def fake_scenarios(monkeypatch: pytest.MonkeyPatch) -> None:
    def floor(self: bench_main.Runner) -> None:
        self.doc["floor"] = {"low_load": {"p50_ms": 2.0, "p99_ms": 3.0}, "max_sustained_per_s": 800}

    def dispatch(self: bench_main.Runner) -> None:
        self.doc["dispatch"]["low_load"] = {"p50_ms": 3.5, "p99_ms": 9.0}
        self.doc["dispatch"]["max_sustained_per_s"] = 253

    for name in bench_main.SCENARIOS:
        monkeypatch.setattr(bench_main.Runner, f"do_{name}", lambda self: None)
    monkeypatch.setattr(bench_main.Runner, "do_floor", floor)
    monkeypatch.setattr(bench_main.Runner, "do_dispatch", dispatch)


def test_a_full_run_is_kept_and_makes_the_docs_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_scenarios(monkeypatch)
    out = tmp_path / "bench" / "results"
    out.mkdir(parents=True)
    assert bench_main.main(["--out-dir", str(out), "--no-progress"]) == 0
    (kept,) = sorted(out.glob("20*.json"))
    doc = json.loads(kept.read_text())
    assert doc["meta"]["kept_as"] == kept.name
    assert json.loads((out / "latest.json").read_text()) == doc

    page = tmp_path / "performance.md"
    page.write_text(f"# Performance\n\n{doc_table.BEGIN}\nold table\n{doc_table.END}\n\nmore\n")
    assert doc_table.main([str(kept), "--write", str(page)]) == 0
    text = page.read_text()
    assert "old table" not in text and text.endswith("\n\nmore\n")
    assert f"bench/results/{kept.name}" in text  # the table names its file
    assert "| `floor.low_load.p50_ms` / `.p99_ms` | 2.00 / 3.00 |" in text
    assert "| `dispatch.max_sustained_per_s` | 253 |" in text
    assert "| `lingua.max_sessions` | - |" in text  # absent from the file: a dash, not a figure
    assert "`dispatch.low_load.p50_ms <= 1.5 x floor.low_load.p50_ms` | 3.50 | 3.00 | **no** |" in (
        text
    )
    assert "`meta.errors empty and exit 0` | 0 | 0 | yes |" in text


def test_a_quick_run_is_not_kept_nor_tabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_scenarios(monkeypatch)
    assert bench_main.main(["--out-dir", str(tmp_path), "--no-progress", "--quick"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["latest.json"]
    assert doc_table.main([str(tmp_path / "latest.json")]) == 2
