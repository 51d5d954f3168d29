"""Exponential backoff with full jitter for reconnects.

Full jitter (a uniform delay between zero and the exponential ceiling) matters more than the
exponent here: when a gateway restarts, thousands of nodes lose their connection in the same
millisecond, and delays without jitter would bring them back in the same millisecond too.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for successive reconnect attempts; :meth:`reset` after a good registration.

    The n-th delay (from 0) is uniform in ``[0, min(cap, base * 2**n)]``.
    """

    def __init__(self, base_s: float = 0.25, cap_s: float = 10.0, rng: random.Random | None = None):
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s} cap_s={cap_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng if rng is not None else random.Random()

    def ceiling(self) -> float:
        """Upper bound of the next delay (no jitter applied)."""
        # Cap the exponent so that a node that retries for days never overflows a float.
        return min(self.cap_s, self.base_s * 2 ** min(self.attempt, 32))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call raises the ceiling of the next one."""
        delay = self._rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the smallest delays: the last attempt reached a registered state."""
        self.attempt = 0
