"""Exceptions that end an agent for good, as opposed to the ones it retries.

Everything the network throws at a node (refused connections, dropped sockets, a gateway that
restarts, a scheduler whose Redis is down) is retried with backoff inside
:meth:`NodeAgent.run`. Only the failures below escape it, because retrying them cannot help:
the operator must change something first.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The agent's configuration is unusable (bad flag, bad TOML, or a capability the
    protocol rejects). Raised before any connection is attempted; the CLI exits 2."""


class RegistrationRejected(Exception):
    """The gateway refused this node permanently (``INVALID_CAPABILITY_SCHEMA``).

    Re-sending the same registration would be refused again, so :meth:`NodeAgent.run`
    raises this instead of reconnecting; the CLI prints ``message`` and exits 1.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
