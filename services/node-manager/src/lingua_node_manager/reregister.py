"""At most one re-register request per connection per window, so an expiry is never a storm.

A node whose record is gone (TTL passed, Redis flushed) keeps beating until its new
registration lands; every one of those beats comes back ``-2 not registered``. Asking the node
to re-register on each of them turns one expiry into one registration per beat, and under
load (registration slower than the beat interval) into thousands of extra registrations on an
already saturated gateway. One request per connection per window is enough; if it was lost,
the next beat after the window asks again.

The memory is per replica: with N node-manager replicas a connection is asked at most N times
per window, still bounded. Entries older than the window are dropped as time passes, so the
table holds at most the connections asked within one window.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ReregisterGate:
    """Remembers which ``(node_id, conn_id)`` were asked to re-register, and when."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._clock = clock
        # insertion order is time order (a key is only inserted when absent), so expired
        # entries are always at the front
        self._asked: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._asked)

    def should_ask(self, node_id: str, conn_id: str) -> bool:
        """True (and remembered) when this connection was not asked within the window."""
        now = self._clock()
        self._prune(now)
        key = (node_id, conn_id)
        if key in self._asked:
            return False
        self._asked[key] = now
        return True

    def forget(self, node_id: str, conn_id: str) -> None:
        """The connection registered again: a later expiry may ask it at once."""
        self._asked.pop((node_id, conn_id), None)

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        asked = self._asked
        while asked:
            key = next(iter(asked))
            if asked[key] > horizon:
                return
            del asked[key]
