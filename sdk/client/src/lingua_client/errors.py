"""The exceptions of the client SDK, one per thing a caller can do something about.

Every wait in the SDK is bounded, and each kind of failure has its own type so that a caller
(or the CLI, which maps them to exit codes) can tell "fix your input" (:class:`AudioError`,
:class:`ConfigError`) from "the gateway said no" (:class:`SessionRejected`) and from "the
network or the server is too slow or gone" (:class:`ClientTimeout`, :class:`ConnectionLost`).
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error the SDK raises on purpose."""


class ConfigError(ClientError, ValueError):
    """A :class:`SessionConfig` or an argument that cannot work; nothing was sent."""


class AudioError(ClientError, ValueError):
    """Audio the client cannot send as is (wrong WAV format, empty, odd bytes, too long)."""


class ConnectError(ClientError):
    """The WebSocket to the gateway could not be opened (refused, bad URL, HTTP error)."""


class SessionRejected(ClientError):
    """The gateway answered ``session_init`` with ``error``, or with an unusable ack."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class ClientTimeout(ClientError, TimeoutError):
    """A bounded wait expired; ``what`` names the wait (e.g. ``"session_init_ack"``)."""

    def __init__(self, what: str, timeout_s: float, detail: str = "") -> None:
        text = f"no {what} within {timeout_s:g} s"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.what = what
        self.timeout_s = timeout_s


class ResultTimeout(ClientTimeout):
    """Utterances still had no answer when :meth:`ClientSession.events` timed out."""

    def __init__(self, timeout_s: float, pending: list[int]) -> None:
        shown = ", ".join(f"#{i}" for i in pending[:20]) + (" ..." if len(pending) > 20 else "")
        super().__init__("answer", timeout_s, f"still waiting for {shown}" if pending else "")
        self.pending = pending


class ConnectionLost(ClientError):
    """The gateway closed or dropped the connection while the session was open."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        shown = "no close frame" if code is None else f"code {code}"
        super().__init__(
            f"connection to the gateway lost ({shown}){': ' + reason if reason else ''}"
        )
        self.code = code
        self.reason = reason
