"""PNG plots (matplotlib, Agg: no display needed): latency CDFs and timelines.

- ``latency_cdf.png``: one CDF per scenario (log latency axis), so p50 and the tail of every
  scenario read off one picture;
- ``timeline_<name>.png``: completions per second and p99 per second across a run, which
  shows where a step of the rate ramp started to hurt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_cdfs(series: dict[str, list[list[float]]], path: Path, title: str) -> Path | None:
    """``series``: name -> ``[[ms, fraction], ...]``. Returns the file, or None if empty."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, pts in series.items():
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests <= latency")
    ax.set_ylim(0, 1.01)
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timeline(
    phases: dict[str, dict[str, Any]], path: Path, title: str, metric: str = "dispatch"
) -> Path | None:
    """Throughput and p99 per second over consecutive phases (x = seconds into the run)."""
    xs: list[float] = []
    rate: list[float] = []
    p99: list[float] = []
    marks: list[tuple[float, str]] = []
    offset = 0.0
    for name, ph in phases.items():
        tl = ph.get(metric, {}).get("timeline") or []
        if not tl:
            continue
        marks.append((offset, name))
        for point in tl:
            xs.append(offset + point["t_s"])
            rate.append(point["count"])
            p99.append(point["p99_ms"])
        offset += max(ph.get("seconds") or 0.0, tl[-1]["t_s"] + 1) + 1
    if not xs:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a1.plot(xs, rate, ".-", lw=0.8, ms=3)
    a1.set_ylabel("completed per second")
    a2.plot(xs, p99, ".-", lw=0.8, ms=3, color="tab:red")
    a2.set_ylabel("p99 per second (ms)")
    a2.set_yscale("log")
    a2.set_xlabel("seconds into the run")
    for ax in (a1, a2):
        ax.grid(True, lw=0.3)
        for x, _ in marks:
            ax.axvline(x, color="grey", lw=0.5, ls=":")
    for x, name in marks:
        a1.annotate(
            name,
            (x, 1),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            rotation=90,
            va="top",
            ha="right",
        )
    a1.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loadgen(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """The plots of one load-generator report."""
    phases = report.get("phases", {})
    cdfs: dict[str, list[list[float]]] = {}
    for name, ph in phases.items():
        if ph["kind"] == "heartbeats":
            lag = ph.get("heartbeats", {}).get("apply_lag_observed", {})
            cdfs[f"{name}: heartbeat apply lag"] = lag.get("cdf") or []
            continue
        cdfs[f"{name}: dispatch"] = ph["dispatch"]["cdf"]
        if ph["kind"] == "closed":
            cdfs[f"{name}: roundtrip"] = ph["roundtrip"]["cdf"]
    made = [
        plot_cdfs(cdfs, out_dir / "loadgen_latency_cdf.png", "load generator: latency CDF"),
        plot_timeline(
            {k: v for k, v in phases.items() if v["kind"] != "heartbeats"},
            out_dir / "loadgen_timeline.png",
            "load generator: throughput and p99 over time (dispatch)",
        ),
    ]
    return [p for p in made if p is not None]
