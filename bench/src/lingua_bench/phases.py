"""What a load-generator run does, phase by phase, and the figures each phase keeps.

Phase specs on the command line (``--phase``):

- ``NAME=closed:SECONDS`` — one utterance in flight: send, wait for its result, send the next;
- ``NAME=open:RATE:SECONDS`` — open loop: utterances at ``RATE``/s whatever the answers;
- ``NAME=step:START:FACTOR:MAX:SECONDS`` — open-loop steps from ``START``/s, times ``FACTOR``
  each step up to ``MAX``/s, until a step's dispatch p99 exceeds the limit or it loses work;
  then one step between the last good and the first bad rate. When ``START`` itself does
  not hold (a slow or busy machine), the steps go *down* by ``FACTOR`` (to 5/s at the
  least) until one holds, so the figure is a rate rather than 0. A failing rate is tried
  once more before it counts as failed (:func:`search_max_rate`);
- ``NAME=heartbeats:SECONDS`` — nodes only: apply lag and expiries while they beat.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lingua_bench.hist import Latency
from lingua_bench.rules import step_holds

KINDS = ("closed", "open", "step", "heartbeats")


class PhaseSpecError(ValueError):
    """A ``--phase`` argument that does not parse."""


@dataclass(frozen=True)
class Phase:
    name: str
    kind: str
    seconds: float
    rate: float = 0.0
    start_rate: float = 0.0
    factor: float = 0.0
    max_rate: float = 0.0


def parse_phase(text: str) -> Phase:
    name, sep, body = text.partition("=")
    if not sep or not name or not body:
        raise PhaseSpecError(f"phase {text!r}: expected NAME=KIND:ARGS")
    kind, *args = body.split(":")
    want = {"closed": 1, "open": 2, "step": 4, "heartbeats": 1}
    if kind not in want:
        raise PhaseSpecError(f"phase {text!r}: kind must be one of {', '.join(KINDS)}")
    if len(args) != want[kind]:
        raise PhaseSpecError(f"phase {text!r}: {kind} takes {want[kind]} argument(s)")
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise PhaseSpecError(f"phase {text!r}: arguments must be numbers") from None
    if any(n <= 0 for n in nums):
        raise PhaseSpecError(f"phase {text!r}: arguments must be > 0")
    if kind == "open":
        return Phase(name, kind, nums[1], rate=nums[0])
    if kind == "step":
        start, factor, top, secs = nums
        if factor <= 1 or top < start:
            raise PhaseSpecError(f"phase {text!r}: FACTOR must be > 1 and MAX >= START")
        return Phase(name, kind, secs, start_rate=start, factor=factor, max_rate=top)
    return Phase(name, kind, nums[0])


@dataclass
class PhaseStats:
    """Figures of one phase (or one step of a step phase)."""

    name: str
    kind: str
    t0_ns: int
    offered_rate: float = 0.0
    sent: int = 0
    assigned: int = 0
    redispatched: int = 0
    completed: int = 0
    unanswered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    dispatch: Latency = field(init=False)
    roundtrip: Latency = field(init=False)
    send_lag: Latency = field(init=False)

    def __post_init__(self) -> None:
        self.dispatch = Latency(f"{self.name}.dispatch", self.t0_ns)
        self.roundtrip = Latency(f"{self.name}.roundtrip", self.t0_ns)
        self.send_lag = Latency(f"{self.name}.send_lag", self.t0_ns)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def held(self, p99_limit_ms: float) -> bool:
        """A rate holds by the rulebook (:func:`lingua_bench.rules.step_holds`): every job
        answered, no error, dispatch p99 (from the scheduled send times) within the limit."""
        return step_holds(
            sent=self.sent,
            answered=self.completed,
            p99_ms=self.dispatch.percentile_ms(99),
            errors=sum(self.errors.values()),
            limit_ms=p99_limit_ms,
        )

    def export(self) -> dict[str, Any]:
        achieved = round(self.completed / self.seconds, 1) if self.seconds else None
        return {
            "kind": self.kind,
            "offered_rate_per_s": self.offered_rate or None,
            "achieved_rate_per_s": achieved if self.kind != "heartbeats" else None,
            "seconds": round(self.seconds, 2),
            "sent": self.sent,
            "assigned": self.assigned,
            "redispatched": self.redispatched,
            "completed": self.completed,
            "unanswered": self.unanswered,
            "errors": self.errors,
            "cpu_s": self.cpu_s,
            "dispatch": self.dispatch.export(),
            "roundtrip": self.roundtrip.export(),
            "send_lag": self.send_lag.summary(),
            **self.extra,
        }


MIN_STEP_RATE = 5.0  # the lowest rate a step phase tries going down


async def search_max_rate(
    measure: Callable[[float], Awaitable[bool]],
    phase: Phase,
    *,
    retries: int = 1,
    splits: int = 1,
    deadline: float = math.inf,
) -> tuple[float, list[tuple[float, bool]]]:
    """The highest rate of ``phase`` that ``measure`` says holds (0 if none), and every step
    measured, in order.

    Up by ``factor`` from ``start_rate`` to the first failure (or down by it, to
    :data:`MIN_STEP_RATE`, when the start already fails), then ``splits`` halvings of the gap
    between the last good and the first bad rate while they are more than 10 % apart.
    A rate that fails is measured again, up to ``retries`` more times, and fails only if
    every try fails: on a shared machine one stall (another process, a GC pause) can spoil
    a step of a rate the system carries, and a capacity figure should not hang on it. No
    step starts when it could not end (``phase.seconds``) before ``deadline``
    (``time.monotonic()``); the search then answers with what it has.
    """
    good: float | None = None
    bad: float | None = None
    tried: list[tuple[float, bool]] = []

    async def holds(rate: float) -> bool:
        for _ in range(1 + retries):
            if time.monotonic() + phase.seconds > deadline:
                raise _OutOfTime
            ok = await measure(rate)
            tried.append((rate, ok))
            if ok:
                return True
        return False

    try:
        rate = phase.start_rate
        while rate <= phase.max_rate:
            if not await holds(rate):
                bad = rate
                break
            good = rate
            rate = round(rate * phase.factor)
        if good is None:
            rate = phase.start_rate
            while good is None and rate / phase.factor >= MIN_STEP_RATE:
                rate = round(rate / phase.factor)
                if await holds(rate):
                    good = rate
                else:
                    bad = rate
        for _ in range(splits):
            if good is None or bad is None or bad / good <= 1.1:
                break
            mid = round((good + bad) / 2)
            if await holds(mid):
                good = mid
            else:
                bad = mid
    except _OutOfTime:
        pass
    return good or 0.0, tried


class _OutOfTime(Exception):
    """The search's deadline came before its next step could end."""
