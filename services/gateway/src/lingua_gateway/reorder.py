"""Ordered delivery of one session's answers: strictly by utterance index, one per index (J6).

The dispatcher releases a session's outcomes in order from Redis, but two dispatcher
replicas publishing consecutive outcomes may still reach this gateway in either order; this
buffer puts them back in order. It is pure (the caller passes the time) so that every rule
is unit-tested without a clock. A hole never blocks forever: when the oldest waiting answer
has waited ``timeout_s``, everything up to it is released and the hole is skipped (the
dispatcher's gap timeout normally fills a hole with ``missing_result`` long before).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
DUPLICATE = "duplicate"  # an index already sent
LATE = "late"  # an index skipped by a timeout release, arriving after all
MAX_SKIPPED_RANGES = 256


@dataclass
class Pushed(Generic[T]):
    """The answers now due, in order, or why the pushed one was dropped.

    ``skipped`` > 0 when the ``max_waiting`` bound forced a release past missing indices.
    """

    ready: list[tuple[int, T]] = field(default_factory=list)
    dropped: str | None = None
    skipped: int = 0


@dataclass
class Released(Generic[T]):
    """What a timeout released, in order, and how many missing indices it skipped."""

    ready: list[tuple[int, T]] = field(default_factory=list)
    skipped: int = 0


class ReorderBuffer(Generic[T]):
    def __init__(self, timeout_s: float, *, max_waiting: int = 1024, first_index: int = 0) -> None:
        self.timeout_s = timeout_s
        self.max_waiting = max_waiting
        self.next_index = first_index
        self._waiting: dict[int, tuple[float, T]] = {}  # index -> (arrived at, answer)
        self._skipped: deque[tuple[int, int]] = deque(maxlen=MAX_SKIPPED_RANGES)  # [lo, hi)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def push(self, index: int, item: T, now: float) -> Pushed[T]:
        """Offer the answer to ``index``; returns what can be sent now (maybe nothing)."""
        if index < self.next_index:
            late = any(lo <= index < hi for lo, hi in self._skipped)
            return Pushed(dropped=LATE if late else DUPLICATE)
        if index in self._waiting:
            return Pushed(dropped=DUPLICATE)
        self._waiting[index] = (now, item)
        pushed: Pushed[T] = Pushed(self._drain())
        if len(self._waiting) > self.max_waiting:
            # memory bound: a flood of far-ahead answers releases like a timeout would
            forced = self._release_through(max(self._waiting))
            pushed.ready += forced.ready
            pushed.skipped = forced.skipped
        return pushed

    def deadline(self) -> float | None:
        """When the oldest waiting answer times out (``None``: nothing waits)."""
        if not self._waiting:
            return None
        return min(t for t, _ in self._waiting.values()) + self.timeout_s

    def expire(self, now: float) -> Released[T]:
        """Release every answer up to the newest index that has waited ``timeout_s``."""
        expired = [i for i, (t, _) in self._waiting.items() if t + self.timeout_s <= now]
        if not expired:
            return Released()
        return self._release_through(max(expired))

    # -- internals ------------------------------------------------------------------------
    def _drain(self) -> list[tuple[int, T]]:
        out: list[tuple[int, T]] = []
        while self.next_index in self._waiting:
            out.append((self.next_index, self._waiting.pop(self.next_index)[1]))
            self.next_index += 1
        return out

    def _release_through(self, upto: int) -> Released[T]:
        released: Released[T] = Released()
        for index in sorted(i for i in self._waiting if i <= upto):
            if index > self.next_index:
                self._skipped.append((self.next_index, index))
                released.skipped += index - self.next_index
            released.ready.append((index, self._waiting.pop(index)[1]))
            self.next_index = index + 1
        released.ready += self._drain()
        return released
