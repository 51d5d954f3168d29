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


def test_the_history_says_which_targets_held_on_two_days(tmp_path: Path) -> None:
    def run(name: str, at: str, met: dict[str, bool | None], quick: bool = False) -> None:
        targets = {k: {"rule": f"rule {k}", "met": v} for k, v in met.items()}
        doc = {"meta": {"generated_at": at, "quick": quick}, "targets": targets}
        (tmp_path / name).write_text(json.dumps(doc))

    run("2026-12-07-amd-epyc.json", "2026-12-07T11:00:00Z", {"a": True, "b": True, "c": None})
    run("2026-12-07-amd-epyc-2.json", "2026-12-07T15:00:00Z", {"a": False, "b": True, "c": True})
    run("2026-12-08-intel-xeon.json", "2026-12-08T01:00:00Z", {"a": True, "b": False, "c": True})
    run("2026-12-08-intel-xeon-2.json", "2026-12-08T02:00:00Z", {"a": True}, quick=True)
    (tmp_path / "cells-2026-12-07.json").write_text("{}")  # not a full run
    (tmp_path / "latest.json").write_text("{}")

    page = tmp_path / "performance.md"
    page.write_text(f"x\n{doc_table.HISTORY_BEGIN}\nold\n{doc_table.HISTORY_END}\ny\n")
    assert doc_table.main([str(tmp_path), "--history", "--write", str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and text.startswith("x\n") and text.endswith("\ny\n")
    assert "1 = `2026-12-07-amd-epyc.json`, 2 = `2026-12-07-amd-epyc-2.json`, 3 = " in text
    assert "intel-xeon-2" not in text  # a quick run is not a kept run
    assert "| `rule a` | yes | no | yes | **yes** |" in text  # the 7th and the 8th
    assert "| `rule b` | yes | yes | no | no |" in text  # twice, but on one day
    assert "| `rule c` | - | yes | yes | **yes** |" in text
