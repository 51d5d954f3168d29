"""CPU seconds of a process from ``/proc/<pid>/stat`` (user + system, children excluded).

Read before and after a phase, the difference is what that process spent on the phase. The
services' PIDs come from the runner (it started them); Redis and RabbitMQ are found by their
own means (``INFO server`` and the ``beam.smp`` process) and are shared with everything else
on the machine, which their figures then include.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds; ``None`` when the process is gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / TICKS


def find_pids(comm: str) -> list[int]:
    """PIDs whose command name is exactly ``comm`` (e.g. ``beam.smp``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() == comm:
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


class CpuMeter:
    """CPU seconds of named processes between :meth:`start` and :meth:`stop`.

    Each PID counts only when it is read at both ends: a short-lived process of the same
    name (``rabbitmqctl`` runs its own ``beam.smp``) that comes or goes in between would
    otherwise add or remove its whole lifetime's CPU."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._start: dict[tuple[str, int], float] = {}
        self.result: dict[str, float] = {}

    def _read(self) -> dict[tuple[str, int], float]:
        out = {}
        for name, pids in self.pids.items():
            for pid in pids:
                v = cpu_seconds(pid)
                if v is not None:
                    out[(name, pid)] = v
        return out

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        sums: dict[str, float] = {}
        for key, v in end.items():
            if key in self._start:
                sums[key[0]] = sums.get(key[0], 0.0) + v - self._start[key]
        self.result = {name: round(v, 2) for name, v in sums.items()}
        return self.result
