"""``python -m lingua_bench`` (``make bench``): every scenario in one invocation, bounded.

Writes ``<out-dir>/latest.json`` with the figures of the benchmark issue (floor, dispatch,
roundtrip, lingua, peer_celery, heartbeats, select, stats), a ``targets`` section, and the plots.
Figures, never assertions: a missed target is reported, the exit code stays 0; a scenario
that crashed is reported under ``meta.errors`` and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from lingua_bench import scenarios
from lingua_bench.guard import NotLoopback, require_loopback
from lingua_bench.plots import plot_cdfs, plot_timeline
from lingua_bench.rules import heartbeat_errors
from lingua_bench.scenarios import FULL, QUICK, ModuleMissing, Sizes
from lingua_bench.targets import compute, errors_target
from lingua_shared.settings import Settings

SELECT_SHARDS = (1, 40, 400)

SCENARIOS = ("floor", "dispatch", "lingua", "peer_celery", "heartbeats", "fleet", "select", "stats")
ALIASES = {"roundtrip": "dispatch"}  # roundtrip.* is measured in the dispatch scenario
BUDGET_S = 25 * 60  # eight scenarios; the fleet and lingua ones take ~3 min each
LINGUA_CPU_KEYS = ("gateway", "dispatcher", "node_manager", "rabbitmq", "redis", "total")


def _pct(summary: dict[str, Any] | None) -> dict[str, float | None]:
    summary = summary or {}
    return {"p50_ms": summary.get("p50_ms"), "p99_ms": summary.get("p99_ms")}


class Runner:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.out_dir: Path = args.out_dir
        self.work = self.out_dir / "work"
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_s
        self.doc: dict[str, Any] = {
            "floor": {"low_load": {"p50_ms": None, "p99_ms": None}, "max_sustained_per_s": None},
            "dispatch": {
                "low_load": {"p50_ms": None, "p99_ms": None},
                "at_200_per_s": {"p50_ms": None, "p99_ms": None},
                "max_sustained_per_s": None,
            },
            "roundtrip": {"low_load": {"p50_ms": None, "p99_ms": None}},
            "lingua": {
                "max_sessions": None,
                "overhead": {"at_half": {"p50_ms": None, "p99_ms": None}},
                "cpu_ms_per_utterance": dict.fromkeys(LINGUA_CPU_KEYS),
            },
            "peer_celery": {
                "decision": {"p50_ms": None, "p99_ms": None},
                "cpu_ms_per_task": None,
                "pool": None,
            },
            "heartbeats": {
                "nodes": None,
                "apply_lag_p99_ms": None,
                "false_expiries": None,
                "cpu_s": None,
            },
            "fleet": {
                "lingua_nodes": None,
                "lingua_registration_failures": None,
                "false_expiries": None,
                "loaded": None,
            },
            "select": {
                "method": None,
                **{f"shards_{n}": {"p50_us": None, "p99_us": None} for n in SELECT_SHARDS},
            },
            "stats": {"snapshot_build_ms_10000_nodes": None, "get_p99_ms": None},
        }
        self.details: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.missing: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, chosen: list[str]) -> dict[str, Any]:
        self.work.mkdir(parents=True, exist_ok=True)
        for name in chosen:
            if self.left() < 10:
                self.errors[name] = "skipped: the time budget is spent"
                continue
            print(f"\n=== {name} ({self.left():.0f} s left in the budget)", file=sys.stderr)
            t = time.monotonic()
            try:
                getattr(self, f"do_{name}")()
            except ModuleMissing as exc:
                self.missing[name] = str(exc)
                print(f"bench: {name}: {exc}", file=sys.stderr)
            except Exception as exc:
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            self.timings[name] = round(time.monotonic() - t, 1)
        return self.finish(chosen)

    # -- scenarios ----------------------------------------------------------------------
    def do_floor(self) -> None:
        r = scenarios.module_scenario(
            "floor",
            duration_s=self.sizes.low_load_s,
            redis_url=self.args.redis_url,
            amqp_url=self.args.amqp_url,
            search=self.sizes.step,  # the dispatch scenario's search (lingua_bench.rules)
            budget_s=max(60.0, self.left() - 10),
        )
        self.doc["floor"] = {
            "low_load": _pct(r["low_load"]),
            "max_sustained_per_s": r["max_sustained_per_s"],
        }

    def do_dispatch(self) -> None:
        r = scenarios.dispatch(
            self.sizes,
            self.args.redis_url,
            self.args.amqp_url,
            self.work,
            not self.args.no_progress,
            max(60.0, self.left()),
        )
        ph = r["phases"]
        low, at200 = ph["low_load"], ph["at_200_per_s"]
        self.doc["dispatch"] = {
            "low_load": _pct(low["dispatch"]["summary"]),
            "at_200_per_s": _pct(at200["dispatch"]["summary"]),
            "max_sustained_per_s": r["max_sustained_per_s"].get("step"),
        }
        self.doc["roundtrip"] = {"low_load": _pct(low["roundtrip"]["summary"])}
        self.details["dispatch"] = {
            "registered_nodes": r["registration"]["nodes"],
            "registration": r["registration"],
            "config": r["config"],
            "phases": {
                name: {
                    **{k: v for k, v in p.items() if k not in ("dispatch", "roundtrip")},
                    "dispatch": p["dispatch"]["summary"],
                    "roundtrip": p["roundtrip"]["summary"],
                }
                for name, p in ph.items()
            },
            "steps": r["steps"],
            "hops": r["hops"],
        }
        self.cdfs = {
            "dispatch, one in flight": low["dispatch"]["cdf"],
            "roundtrip, one in flight": low["roundtrip"]["cdf"],
            "dispatch at 200/s": at200["dispatch"]["cdf"],
        }
        self.dispatch_phases = ph

    def do_lingua(self) -> None:
        from lingua_bench import lingua

        r = lingua.run(
            self.args.quick,
            self.args.redis_url,
            self.args.amqp_url,
            self.work,
            not self.args.no_progress,
            max(60.0, self.left()),
        )
        half = r["at_half"] or {}
        cpu = r["cpu_ms_per_utterance"] or {}
        self.doc["lingua"] = {
            "max_sessions": r["max_sessions"],
            "overhead": {"at_half": _pct(half.get("overhead"))},
            "cpu_ms_per_utterance": {k: cpu.get(k) for k in LINGUA_CPU_KEYS},
        }
        self.details["lingua"] = {k: v for k, v in r.items() if k != "at_half_overhead_cdf"}
        if r["at_half_overhead_cdf"]:
            self.lingua_cdfs = {"lingua overhead at half the max": r["at_half_overhead_cdf"]}
        lost = sum(
            st["withheld_awaiting_deadline"]["never_answered"] for st in [*r["steps"], half] if st
        )
        if not r["max_sessions"] or not half:
            # no session count held: no figure at half of it either
            self.errors["lingua"] = f"no figures: max_sessions {r['max_sessions']}"
        elif lost:
            self.errors["lingua"] = f"{lost} withheld utterances never answered, past the deadline"

    def do_peer_celery(self) -> None:
        r = scenarios.module_scenario(
            "peer_celery",
            redis_url=self.args.redis_url,
            amqp_url=self.args.amqp_url,
            n=self.sizes.peer_n,
        )
        self.doc["peer_celery"] = {
            "decision": _pct(r["decision"]),
            "cpu_ms_per_task": r["cpu_ms_per_task"],  # worker + client + broker
            "pool": r["pool"],
        }
        self.details["peer_celery"] = {
            "cpu_ms_per_task_by_process": r["cpu_ms_per_task_by_process"],
            "pools": r["pools"],
        }

    def do_heartbeats(self) -> None:
        r = scenarios.heartbeats(
            self.sizes,
            self.args.redis_url,
            self.args.amqp_url,
            self.work,
            not self.args.no_progress,
            self.deadline,
        )
        tried = [a for a in r["attempts"] if "held" in a]
        best = r["best"]
        shown = best or (max(tried, key=lambda a: a["nodes"]) if tried else None)
        if shown is not None:
            self.doc["heartbeats"] = {
                "nodes": best["nodes"] if best else 0,
                "apply_lag_p99_ms": shown.get("apply_lag_p99_ms"),
                "false_expiries": shown.get("false_expiries"),
                "cpu_s": shown.get("cpu_s"),
            }
        self.details["heartbeats"] = {
            "interval_ms": 1000,
            "seconds": self.sizes.hb_seconds,
            "attempts": [{k: v for k, v in a.items() if k != "apply_lag"} for a in r["attempts"]],
        }
        self.hb_attempts = [a for a in r["attempts"] if "apply_lag" in a]
        # a crash, or a fall-back below the count it must hold, is an error (rulebook)
        errs = heartbeat_errors(r["attempts"], self.sizes.hb_counts[0])
        if errs:
            self.errors["heartbeats"] = "; ".join(errs)

    def do_fleet(self) -> None:
        from lingua_bench import fleet_bench

        r = fleet_bench.run(
            self.args.quick,
            self.args.redis_url,
            self.args.amqp_url,
            self.work,
            not self.args.no_progress,
            max(60.0, self.left()),
        )
        self.doc["fleet"] = {k: v for k, v in r.items() if k != "details"}
        self.details["fleet"] = r["details"]

    def do_select(self) -> None:
        shards = (1, 2) if self.args.quick else SELECT_SHARDS  # 400 shards: 102,400 nodes
        r = scenarios.module_scenario(
            "select_bench",
            redis_url=self.args.redis_url,
            samples=50 if self.args.quick else 1_000,
            shards=shards,
        )
        for key, v in r.items():
            if key.startswith("shards_"):
                self.doc["select"][key] = {"p50_us": v["p50_us"], "p99_us": v["p99_us"]}
        self.doc["select"]["method"] = r["method"]
        self.details["select"] = r

    def do_stats(self) -> None:
        r = scenarios.module_scenario("stats_bench", redis_url=self.args.redis_url)
        self.doc["stats"] = {
            "snapshot_build_ms_10000_nodes": r["snapshot_build_ms_10000_nodes"],
            "get_p99_ms": r["get_p99_ms"],
        }

    # -- output -------------------------------------------------------------------------
    def finish(self, chosen: list[str]) -> dict[str, Any]:
        doc = dict(self.doc)
        doc["targets"] = {**compute(self.doc), "meta_errors_empty": errors_target(self.errors)}
        doc["meta"] = {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["python -m lingua_bench", *sys.argv[1:]]),
            "quick": self.args.quick,
            "scenarios": chosen,
            "seconds": round(time.monotonic() - self.start, 1),
            "scenario_seconds": self.timings,
            "machine": machine(),
            "missing_modules": self.missing,
            "errors": self.errors,
            "amqp_queue_type": Settings().amqp_queue_type,
        }
        doc["details"] = self.details
        doc["meta"]["plots"] = [str(p.name) for p in self.plots()]
        return doc

    def plots(self) -> list[Path]:
        made: list[Path | None] = []
        cdfs = dict(getattr(self, "cdfs", {}))
        cdfs.update(getattr(self, "lingua_cdfs", {}))
        for a in getattr(self, "hb_attempts", []):
            cdfs[f"heartbeat apply lag, {a['nodes']} nodes at 1 Hz"] = a["apply_lag"]["cdf"]
        made.append(plot_cdfs(cdfs, self.out_dir / "latency_cdf.png", "latency CDF per scenario"))
        if getattr(self, "dispatch_phases", None):
            made.append(
                plot_timeline(
                    self.dispatch_phases,
                    self.out_dir / "timeline_dispatch.png",
                    "dispatch: jobs per second and p99 per second (closed, 200/s, rate steps)",
                )
            )
        if getattr(self, "hb_attempts", None):
            phases = {
                f"{a['nodes']} nodes": {"seconds": a["seconds"], "lag": a["apply_lag"]}
                for a in self.hb_attempts
            }
            made.append(
                plot_timeline(
                    phases,
                    self.out_dir / "timeline_heartbeats.png",
                    "heartbeats at 1 Hz: sampled beats applied per second and apply-lag p99",
                    metric="lag",
                )
            )
        return [p for p in made if p is not None]


def kept_path(out_dir: Path, generated_at: str, machine: dict[str, Any]) -> Path:
    """``<out_dir>/<UTC date>-<cpu model slug>.json``; ``-2``, ``-3`` ... when the day and
    the machine already have one, so no run replaces another."""
    slug = re.sub(r"[^a-z0-9]+", "-", (machine.get("cpu_model") or "unknown-cpu").lower())
    slug = re.sub(r"-(r|tm)-", "-", f"-{slug.strip('-')}-").strip("-")  # (R), (TM)
    stem = f"{generated_at[:10]}-{slug}"
    path, n = out_dir / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = out_dir / f"{stem}-{n}.json"
    return path


def machine() -> dict[str, Any]:
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_end": list(os.getloadavg()),
    }


def report(doc: dict[str, Any]) -> str:
    lines = ["", "figures (ms unless named):"]
    sections = (
        "floor",
        "dispatch",
        "roundtrip",
        "lingua",
        "peer_celery",
        "heartbeats",
        "fleet",
        "select",
        "stats",
    )
    for section in sections:
        lines.append(f"  {section}: {json.dumps(doc[section])}")
    lines.append("targets:")
    for t in doc["targets"].values():
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  [{mark:>6}] {t['rule']}: value {t['value']}, limit {t['limit']}")
    if doc["meta"]["missing_modules"]:
        lines.append(f"missing modules: {', '.join(doc['meta']['missing_modules'])}")
    if doc["meta"]["errors"]:
        lines.append(f"errors: {doc['meta']['errors']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lingua_bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="seconds per scenario, small counts")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)} (roundtrip = dispatch)",
    )
    ap.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    ap.add_argument(
        "--redis-url",
        default=os.environ.get("LINGUA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
    )
    ap.add_argument(
        "--amqp-url",
        default=os.environ.get("LINGUA_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-clock bound")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require_loopback(args.redis_url)
        require_loopback(args.amqp_url)
    except NotLoopback as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    chosen: list[str] = []
    for item in args.only:
        for name in item.split(","):
            name = ALIASES.get(name.strip(), name.strip())
            if name not in SCENARIOS:
                print(f"bench: unknown scenario {name!r}; one of {SCENARIOS}", file=sys.stderr)
                return 2
            if name not in chosen:
                chosen.append(name)
    chosen = [s for s in SCENARIOS if s in chosen] if chosen else list(SCENARIOS)
    runner = Runner(args, QUICK if args.quick else FULL)
    doc = runner.run(chosen)
    path = args.out_dir / "latest.json"
    kept = None
    if not args.quick and chosen == list(SCENARIOS):
        # every full run is kept, under a name of its own, to be committed
        kept = kept_path(args.out_dir, doc["meta"]["generated_at"], doc["meta"]["machine"])
        doc["meta"]["kept_as"] = kept.name
        kept.write_text(json.dumps(doc, indent=2) + "\n")
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(report(doc))
    plots = ", ".join(doc["meta"]["plots"]) or "no plots"
    print(f"\nwritten: {path}{f', {kept}' if kept else ''} and {plots}")
    return 1 if doc["meta"]["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
