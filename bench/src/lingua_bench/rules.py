"""The rulebook: one set of rules for the floor and for the scheduler's job path.

- **Latency from the scheduled send time.** In an open-loop phase each message has a due
  time (``start + k / rate``); its latency is measured from that time, not from the moment
  the generator got round to sending it. A generator that falls behind (a stall of the
  machine, of its own loop) then counts against the rate instead of hiding it (coordinated
  omission). In a closed loop the two times are the same.
- **No loss allowance.** A rate holds only when every message sent was answered, no error
  came back and the p99 is within :data:`P99_LIMIT_MS`. A message still unanswered after
  :data:`DRAIN_S` fails its step, and it adds a sample too: the time it had waited by then
  (a lower bound of its latency), so the unanswered weigh on the percentiles.
- **The same rate search and step length.** :data:`FULL_SEARCH` (``--quick``:
  :data:`QUICK_SEARCH`) through :func:`lingua_bench.phases.search_max_rate` with
  :data:`SEARCH_SPLITS` splits, for the floor and for ``dispatch`` alike.
- **The same publishing.** The floor's processes publish coalesced, as the services do
  (``Publisher.publish_batched``).

And for the run as a whole: a scenario that crashed or fell back to a smaller size than
the one it must hold is an error (``meta.errors``, exit code 1), never only ``held: false``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

P99_LIMIT_MS = 50.0
DRAIN_S = 3.0  # after a step, how long its last messages may take to come back
# START:FACTOR:MAX:SECONDS of the rate search (lingua_bench.phases.parse_phase's step kind)
FULL_SEARCH = "100:1.3:3000:6"
QUICK_SEARCH = "50:2:100:1"
SEARCH_SPLITS = 1


def scheduled_ns(start_ns: int, k: int, rate: float) -> int:
    """The due time of the ``k``-th message of an open loop at ``rate``/s from ``start_ns``."""
    return start_ns + int(k * 1e9 / rate)


def step_holds(
    *, sent: int, answered: int, p99_ms: float | None, errors: int = 0, limit_ms: float
) -> bool:
    """A rate holds when something was sent, every message was answered, nothing came back
    as an error, and the p99 (taken from the scheduled send times) is within the limit."""
    return (
        sent > 0 and answered == sent and errors == 0 and p99_ms is not None and p99_ms <= limit_ms
    )


def heartbeat_errors(attempts: Sequence[Mapping[str, Any]], required: int) -> list[str]:
    """What makes a heartbeat scenario an error: the count it must hold (``required``, its
    first) did not hold, whether it crashed or missed its limits and the scenario fell back
    to a smaller fleet, or an attempt crashed. An attempt past the required count that ran
    and missed its limits is where the search ends, not an error."""
    out: list[str] = []
    first = next((a for a in attempts if a.get("nodes") == required), None)
    if first is None:
        out.append(f"{required} nodes not tried")
    elif "skipped" in first:
        out.append(f"{required} nodes skipped: {first['skipped']}")
    elif not first.get("held"):
        why = (
            first.get("error")
            or first.get("reason")
            or (
                f"false_expiries {first.get('false_expiries')}, "
                f"apply_lag_p99_ms {first.get('apply_lag_p99_ms')}"
            )
        )
        fell = [a["nodes"] for a in attempts if a.get("nodes", 0) < required and "held" in a]
        fallback = f"; fell back to {fell[0]}" if fell else ""
        out.append(f"{required} nodes did not hold ({why}){fallback}")
    for a in attempts:
        if a is not first and a.get("error"):
            out.append(f"{a.get('nodes')} nodes crashed: {a['error']}")
    return out
