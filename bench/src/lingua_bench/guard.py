"""Loopback only: the load generator and the runner never aim load at another machine.

A benchmark that floods a remote gateway by mistake is an outage, so every URL the bench
connects to is checked here first and anything that is not a loopback address is refused
with a typed error before a single socket opens.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse


class NotLoopback(ValueError):
    """A URL names a host that is not this machine's loopback interface."""


def require_loopback(url: str) -> str:
    """Return ``url`` unchanged when its host is loopback; raise :class:`NotLoopback` otherwise."""
    try:
        host = urlparse(url).hostname
    except ValueError as exc:
        raise NotLoopback(f"unparsable URL {url!r}: {exc}") from None
    if not host:
        raise NotLoopback(f"URL {url!r} names no host")
    if host == "localhost":
        return url
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise NotLoopback(
            f"URL {url!r}: host {host!r} is not a loopback address (use 127.0.0.1)"
        ) from None
    if not ip.is_loopback:
        raise NotLoopback(f"URL {url!r}: {host} is not a loopback address; the bench is local")
    return url
