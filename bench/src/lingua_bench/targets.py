"""The targets of the benchmark issue, computed from one run's figures.

Every target compares figures of the same invocation (the machine is shared and noisy:
ratios within one run mean more than absolute figures across runs). A target whose inputs
are missing (a scenario skipped or not in the checkout) has ``met: null`` and says why.
"""

from __future__ import annotations

from typing import Any


def _get(doc: dict[str, Any], path: str) -> float | None:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, int | float) and not isinstance(cur, bool) else None


def _target(
    value: float | None, limit: float | None, op: str, what: str, missing: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value, "limit": limit, "rule": what}
    if value is None or limit is None:
        out["met"] = None
        out["missing"] = missing
        return out
    out["limit"] = round(limit, 3)
    out["met"] = {
        "<=": value <= limit,
        "<": value < limit,
        ">=": value >= limit,
        "==": value == limit,
    }[op]
    return out


def compute(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    g = lambda p: _get(doc, p)  # noqa: E731
    miss = lambda *paths: [p for p in paths if g(p) is None]  # noqa: E731

    floor_p50 = g("floor.low_load.p50_ms")
    floor_max = g("floor.max_sustained_per_s")
    sel1 = g("select.shards_1.p99_us")
    return {
        **_lingua_targets(doc),
        "dispatch_low_load_p50_vs_floor": _target(
            g("dispatch.low_load.p50_ms"),
            1.5 * floor_p50 if floor_p50 is not None else None,
            "<=",
            "dispatch.low_load.p50_ms <= 1.5 x floor.low_load.p50_ms",
            miss("dispatch.low_load.p50_ms", "floor.low_load.p50_ms"),
        ),
        "dispatch_max_sustained_vs_floor": _target(
            g("dispatch.max_sustained_per_s"),
            0.5 * floor_max if floor_max is not None else None,
            ">=",
            "dispatch.max_sustained_per_s >= 0.5 x floor.max_sustained_per_s",
            miss("dispatch.max_sustained_per_s", "floor.max_sustained_per_s"),
        ),
        "fleet_lingua_nodes": _fleet_target(doc),
        "heartbeats_nodes": _target(
            g("heartbeats.nodes"),
            10_000.0,
            ">=",
            "heartbeats.nodes >= 10,000 at 1 Hz for 60 s",
            miss("heartbeats.nodes"),
        ),
        "heartbeats_false_expiries": _target(
            g("heartbeats.false_expiries"),
            0.0,
            "==",
            "heartbeats.false_expiries == 0",
            miss("heartbeats.false_expiries"),
        ),
        "heartbeats_apply_lag_p99": _target(
            g("heartbeats.apply_lag_p99_ms"),
            1000.0,
            "<=",
            "heartbeats.apply_lag_p99_ms <= 1000",
            miss("heartbeats.apply_lag_p99_ms"),
        ),
        "select_shards_400_vs_1": _target(
            g("select.shards_400.p99_us"),
            1.5 * sel1 if sel1 is not None else None,
            "<=",
            "select.shards_400.p99_us <= 1.5 x select.shards_1.p99_us (Redis-side)",
            miss("select.shards_400.p99_us", "select.shards_1.p99_us"),
        ),
    }


def errors_target(errors: dict[str, str]) -> dict[str, Any]:
    """``meta.errors`` empty (and so exit 0): no scenario crashed or fell back."""
    return {
        "value": len(errors),
        "limit": 0,
        "rule": "meta.errors empty and exit 0",
        "met": not errors,
        **({"errors": sorted(errors)} if errors else {}),
    }


def _lingua_targets(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The lingua scenario against the Celery peer's CPU and the floor's low-load p99."""
    g = lambda p: _get(doc, p)  # noqa: E731
    miss = lambda *paths: [p for p in paths if g(p) is None]  # noqa: E731
    peer_cpu = g("peer_celery.cpu_ms_per_task")
    floor_p99 = g("floor.low_load.p99_ms")
    return {
        "lingua_cpu_per_utterance_vs_peer": _target(
            g("lingua.cpu_ms_per_utterance.total"),
            3 * peer_cpu if peer_cpu is not None else None,
            "<=",
            "lingua.cpu_ms_per_utterance.total <= 3 x peer_celery.cpu_ms_per_task",
            miss("lingua.cpu_ms_per_utterance.total", "peer_celery.cpu_ms_per_task"),
        ),
        "lingua_overhead_at_half_p99_vs_floor": _target(
            g("lingua.overhead.at_half.p99_ms"),
            4 * floor_p99 if floor_p99 is not None else None,
            "<=",
            "lingua.overhead.at_half.p99_ms <= 4 x floor.low_load.p99_ms",
            miss("lingua.overhead.at_half.p99_ms", "floor.low_load.p99_ms"),
        ),
    }


def _fleet_target(doc: dict[str, Any]) -> dict[str, Any]:
    """20,000 lingua nodes registered with no failure and no false expiry, under the hog."""
    fleet = doc.get("fleet") or {}
    nodes = _get(doc, "fleet.lingua_nodes")
    out = _target(
        nodes,
        20_000.0,
        ">=",
        "fleet.lingua_nodes >= 20000 with fleet.lingua_registration_failures == 0, "
        "fleet.false_expiries == 0 and fleet.loaded",
        [p for p in ("fleet.lingua_nodes",) if nodes is None],
    )
    if out["met"]:
        out["met"] = (
            fleet.get("lingua_registration_failures") == 0
            and fleet.get("false_expiries") == 0
            and fleet.get("loaded") is True
        )
    return out
