"""Latency recording: one HDR histogram per scenario plus one per second of the run.

HDR histograms keep every percentile to 3 significant digits at a fixed memory cost, so a
run of millions of samples reports its p99 as exactly as a run of a hundred. Values are
recorded in microseconds (1 µs .. 120 s); figures come out in milliseconds.
"""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 120_000_000
DIGITS = 3


def _new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


class Latency:
    """Latencies of one scenario: the whole distribution and a per-second timeline."""

    def __init__(self, name: str, t0_ns: int) -> None:
        self.name = name
        self.t0_ns = t0_ns
        self.total = _new()
        self.per_second: dict[int, HdrHistogram] = {}
        self.clipped = 0

    def record_ns(self, latency_ns: int, at_ns: int) -> None:
        """Record one latency measured at monotonic time ``at_ns``."""
        us = max(LOWEST_US, latency_ns // 1000)
        if us > HIGHEST_US:
            self.clipped += 1
            us = HIGHEST_US
        self.total.record_value(us)
        second = max(0, (at_ns - self.t0_ns) // 1_000_000_000)
        h = self.per_second.get(second)
        if h is None:
            h = self.per_second[second] = _new()
        h.record_value(us)

    @property
    def count(self) -> int:
        return int(self.total.get_total_count())

    def percentile_ms(self, p: float) -> float | None:
        if self.count == 0:
            return None
        return round(self.total.get_value_at_percentile(p) / 1000, 3)

    def summary(self) -> dict[str, Any]:
        """Count and percentiles in ms (``None`` when nothing was recorded)."""
        return {
            "count": self.count,
            "p50_ms": self.percentile_ms(50),
            "p90_ms": self.percentile_ms(90),
            "p99_ms": self.percentile_ms(99),
            "p999_ms": self.percentile_ms(99.9),
            "max_ms": round(self.total.get_max_value() / 1000, 3) if self.count else None,
            "mean_ms": round(self.total.get_mean_value() / 1000, 3) if self.count else None,
        }

    def cdf(self) -> list[list[float]]:
        """``[latency_ms, fraction <= it]`` pairs for a CDF plot."""
        if self.count == 0:
            return []
        return [
            [round(it.value_iterated_to / 1000, 3), round(it.percentile / 100, 6)]
            for it in self.total.get_recorded_iterator()
        ]

    def timeline(self) -> list[dict[str, float]]:
        """Per second since the start: completions and p99 in ms."""
        return [
            {
                "t_s": float(s),
                "count": int(h.get_total_count()),
                "p50_ms": round(h.get_value_at_percentile(50) / 1000, 3),
                "p99_ms": round(h.get_value_at_percentile(99) / 1000, 3),
            }
            for s, h in sorted(self.per_second.items())
        ]

    def export(self) -> dict[str, Any]:
        """Everything a report or a plot needs, JSON-ready; the histogram itself encoded."""
        return {
            "summary": self.summary(),
            "cdf": self.cdf(),
            "timeline": self.timeline(),
            "hdr": self.total.encode().decode() if self.count else None,
            "clipped": self.clipped,
        }
