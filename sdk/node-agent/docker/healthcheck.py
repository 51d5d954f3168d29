"""Container health of a node agent (or a simulator of many): is a connection open?

The agent serves no HTTP, so the image's HEALTHCHECK (and the Kubernetes exec probes) ask
the kernel instead: healthy while the container's network namespace holds at least one
ESTABLISHED TCP connection, which for this image can only be a WebSocket to a gateway.
An agent that is reconnecting (gateway restarting, 1012) is briefly unhealthy; orchestrators
tolerate that with their failure thresholds. Standard library only: it runs in the slim image.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
ESTABLISHED = "01"  # the `st` column of /proc/net/tcp (include/net/tcp_states.h)


def established_count(lines: Iterable[str]) -> int:
    """Rows of a /proc/net/tcp table (header included) in state ESTABLISHED."""
    count = 0
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[0].endswith(":") and fields[3] == ESTABLISHED:
            count += 1
    return count


def main(tables: Iterable[str] = TCP_TABLES) -> int:
    total = 0
    for table in tables:
        path = Path(table)
        if path.is_file():  # tcp6 is absent where IPv6 is disabled
            total += established_count(path.read_text().splitlines())
    if total == 0:
        print("no established connection (to a gateway)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
