"""Who may connect, from where, how many times and how fast (docs/reliability.md).

Checked at the WebSocket handshake, before a single message is read:

* **Origin** (``/ws/session`` only): a browser page from an origin not on
  ``LINGUA_WS_ALLOWED_ORIGINS`` gets HTTP 403. Non-browser clients send no Origin.
* **Credentials** (when ``LINGUA_AUTH`` is on): a node or client token, verified by
  :class:`lingua_shared.auth.TokenVerifier`; a missing or bad token closes the connection
  with 1008 and a reason, without reading anything from it.
* **Connections per identity**: at most ``LINGUA_WS_MAX_CONNECTIONS_PER_IDENTITY`` per token
  subject on this replica (1008 beyond it).

Then, while connected, :class:`ByteRate` holds each connection to its byte rate by pausing
its reads: TCP pushes the flood back to the sender and nothing accepted is dropped.
"""

from __future__ import annotations

import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request

from lingua_shared.auth import Kind, Principal, TokenVerifier, bearer_token
from lingua_shared.errors import Unauthorized
from lingua_shared.settings import Settings


class Access:
    def __init__(self, settings: Settings) -> None:
        self.verifier = TokenVerifier(settings) if settings.auth_enabled else None
        self.origins = settings.allowed_origins()
        self.max_per_identity = settings.ws_max_connections_per_identity
        self.held: Counter[tuple[str, str]] = Counter()

    def origin_allowed(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or self.origins is None:
            return True
        return origin.rstrip("/") in self.origins

    def authenticate(self, request: Request, kind: Kind) -> Principal | Unauthorized | None:
        """The principal, the reason to refuse, or ``None`` when authentication is off."""
        if self.verifier is None:
            return None
        query = parse_qs(urlsplit(request.path).query).get("token", [None])[0]
        token = bearer_token(request.headers.get("Authorization"), query)
        try:
            return self.verifier.verify(token, kind)
        except Unauthorized as exc:
            return exc

    def claim(self, principal: Principal) -> bool:
        key = (principal.kind, principal.subject)
        if self.held[key] >= self.max_per_identity:
            return False
        self.held[key] += 1
        return True

    def release(self, principal: Principal) -> None:
        key = (principal.kind, principal.subject)
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]


class ByteRate:
    """A token bucket over received bytes: ``rate`` per second, ``burst_s`` seconds deep."""

    def __init__(self, rate: int, burst_s: float) -> None:
        self.rate = max(1, rate)
        self.capacity = self.rate * max(burst_s, 0.001)
        self.tokens = self.capacity
        self.last = time.monotonic()

    def delay_for(self, nbytes: int) -> float:
        """Take ``nbytes``; how long the reader must now pause to stay within the rate."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= nbytes
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
