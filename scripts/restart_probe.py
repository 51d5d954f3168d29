"""Measure how long new connections are refused while a gateway restarts.

lingua's node agent reconnects once, 5 s after its socket closes; if that one attempt is
refused the node is lost until someone restarts it. So a gateway restart must never leave a
moment in which a new connection is refused. This probe opens a new connection to
``/ws/node`` every ``--interval-ms`` (20 ms) while a restart runs: a TCP connect, then the
WebSocket upgrade request. It records what happened to each attempt and when:

    accepted   101 Switching Protocols (the probe then closes it with 1000)
    refused    TCP connection refused (nothing listening)
    503        the upgrade answered 503 (a gateway that is draining)
    reset      the connection was reset or closed before the answer
    timeout    no answer within --timeout-s
    http_NNN   any other answer; error: any other failure

and prints: the attempts by outcome; the longest time without an accepted attempt (every
attempt start counts; with no failure it is about one interval); the refusal window (from
the first failed attempt to the next accepted one; 0 when nothing failed); and, read from
the gateway log, when the old process stopped listening (``gateway.draining``, logged right
after it closed its listening socket) and how long after that the first connection was
accepted (then necessarily by the new process). It exits 3 when any attempt failed (or
with the command's exit code when that is not 0).

    python scripts/restart_probe.py                       # probes `stack.py restart gateway`
    python scripts/restart_probe.py -- docker restart lingua-gateway-1
    python scripts/restart_probe.py --duration 30         # probe only; restart by hand

``make restart-probe`` runs the first form against ``make up``'s stack. The functions are
used by ``tests/integration/test_gateway_restart.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = f"ws://127.0.0.1:{os.environ.get('LINGUA_GATEWAY_PORT', '5010')}/ws/node"
DEFAULT_LOG = ROOT / ".run" / "logs" / "gateway.log"
ACCEPTED = "accepted"
# a masked close frame, code 1000 (a client must mask what it sends)
_MASK = b"\x11\x22\x33\x44"
_CLOSE_FRAME = b"\x88\x82" + _MASK + bytes(b ^ m for b, m in zip(b"\x03\xe8", _MASK, strict=False))


@dataclass
class Attempt:
    start: float  # wall clock (epoch seconds), comparable with the services' log `ts`
    end: float
    outcome: str
    detail: str = ""


def _request(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "User-Agent: lingua-restart-probe\r\n\r\n"
    ).encode()


class Clock:
    """Wall-clock readings that are monotonic between themselves (intervals never jump)."""

    def __init__(self) -> None:
        self.wall0 = time.time()
        self.mono0 = time.monotonic()

    def now(self) -> float:
        return self.wall0 + (time.monotonic() - self.mono0)


async def attempt(url: str, clock: Clock, timeout: float = 2.0) -> Attempt:
    """One new connection: TCP connect, WebSocket upgrade, classified (see the module doc)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    start = clock.now()

    def done(outcome: str, detail: str = "") -> Attempt:
        return Attempt(start, clock.now(), outcome, detail)

    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return done("refused")
    except ConnectionResetError as exc:
        return done("reset", repr(exc))
    except TimeoutError:
        return done("timeout", "connect")
    except OSError as exc:
        return done("error", repr(exc))
    try:
        writer.write(_request(host, port, path))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            return done("reset", "closed before answering")
        try:
            status = int(line.split()[1])
        except (IndexError, ValueError):
            return done("error", line[:80].decode(errors="replace"))
        if status == 101:
            while (header := await asyncio.wait_for(reader.readline(), timeout)) not in (
                b"\r\n",
                b"",
            ):
                del header
            writer.write(_CLOSE_FRAME)
            with contextlib.suppress(OSError):
                await writer.drain()
            return done(ACCEPTED)
        return done("503" if status == 503 else f"http_{status}")
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
        return done("reset", repr(exc))
    except TimeoutError:
        return done("timeout", "answer")
    except OSError as exc:
        return done("error", repr(exc))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def probe(
    url: str,
    stop: asyncio.Event,
    interval_s: float = 0.02,
    timeout: float = 2.0,
) -> list[Attempt]:
    """Start one attempt every ``interval_s`` (each in its own task, so a slow one delays
    none of the next) until ``stop`` is set; every attempt, in start order."""
    clock = Clock()
    tasks: list[asyncio.Task[Attempt]] = []
    next_at = time.monotonic()
    while not stop.is_set():
        tasks.append(asyncio.create_task(attempt(url, clock, timeout)))
        next_at += interval_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    results = await asyncio.gather(*tasks)
    return sorted(results, key=lambda a: a.start)


@dataclass
class LogMarks:
    """What the gateway log says happened during the probe (wall-clock ``ts``)."""

    draining: list[float] = field(default_factory=list)  # old processes stopped listening
    started: list[float] = field(default_factory=list)  # new processes listening
    stopped: list[float] = field(default_factory=list)  # old processes exited


def read_log_marks(text: str, since: float = 0.0) -> LogMarks:
    marks = LogMarks()
    wanted = {"gateway.draining": marks.draining, "gateway.started": marks.started}
    wanted["gateway.stopped"] = marks.stopped
    for line in text.splitlines():
        if '"gateway.' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        target = wanted.get(doc.get("event"))
        if target is not None and float(doc.get("ts", 0)) >= since:
            target.append(float(doc["ts"]))
    return marks


@dataclass
class Summary:
    attempts: int
    outcomes: dict[str, int]
    longest_without_accept_s: float  # between consecutive accepted attempt starts (or ends)
    refusal_window_s: float  # first failed attempt -> next accepted one; 0 if none failed
    failures: list[dict[str, object]]
    stopped_listening_at: float | None = None  # old process: gateway.draining ts
    first_accept_after_stop_s: float | None = None  # after stopped_listening_at
    new_listening_before_stop_s: float | None = None  # gateway.started -> gateway.draining
    first_failure_at: float | None = None

    def lines(self) -> list[str]:
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        out = [
            f"attempts                              {self.attempts} ({by})",
            f"longest time without an accepted one  {self.longest_without_accept_s * 1000:.0f} ms",
            f"refusal window                        {self.refusal_window_s * 1000:.0f} ms",
        ]
        if self.new_listening_before_stop_s is not None:
            out.append(
                "new process listening before the old one stopped  "
                f"{self.new_listening_before_stop_s:.2f} s"
            )
        if self.first_accept_after_stop_s is not None:
            out.append(
                "old stopped listening -> first accepted           "
                f"{self.first_accept_after_stop_s * 1000:.0f} ms"
            )
        elif self.stopped_listening_at is None:
            out.append("old stopped listening                 not seen in the log")
        for f in self.failures[:10]:
            out.append(f"  failed: {f}")
        return out


def summarize(attempts: list[Attempt], marks: LogMarks | None = None) -> Summary:
    attempts = sorted(attempts, key=lambda a: a.start)
    outcomes: dict[str, int] = {}
    for a in attempts:
        outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
    accepted = [a for a in attempts if a.outcome == ACCEPTED]
    # the longest stretch with no accepted connection, over the probed period: between the
    # starts of consecutive accepted attempts, and from the first/last attempt to the
    # first/last accepted one
    longest = 0.0
    if attempts:
        if not accepted:
            longest = attempts[-1].end - attempts[0].start
        else:
            points = [attempts[0].start, *(a.start for a in accepted), attempts[-1].start]
            longest = max(b - a for a, b in itertools.pairwise(points))
    # refusal window: each run of failed attempts, from its first start to the start of the
    # next accepted attempt (or the end of the probe when none followed)
    window = 0.0
    run_start: float | None = None
    for a in attempts:
        if a.outcome != ACCEPTED:
            if run_start is None:
                run_start = a.start
        elif run_start is not None:
            window = max(window, a.start - run_start)
            run_start = None
    if run_start is not None:
        window = max(window, attempts[-1].end - run_start)
    failures = [
        {
            "at": round(a.start, 3),
            "outcome": a.outcome,
            "took_ms": round((a.end - a.start) * 1000, 1),
            "detail": a.detail,
        }
        for a in attempts
        if a.outcome != ACCEPTED
    ]
    summary = Summary(
        attempts=len(attempts),
        outcomes=outcomes,
        longest_without_accept_s=longest,
        refusal_window_s=window,
        failures=failures,
        first_failure_at=failures[0]["at"] if failures else None,  # type: ignore[arg-type]
    )
    if marks and marks.draining:
        stop_at = marks.draining[0]
        summary.stopped_listening_at = stop_at
        after = [a for a in accepted if a.start >= stop_at]
        if after:
            summary.first_accept_after_stop_s = max(0.0, after[0].end - stop_at)
        before = [t for t in marks.started if t <= stop_at]
        if before:
            summary.new_listening_before_stop_s = stop_at - before[-1]
    return summary


async def measure(
    url: str,
    command: list[str] | None,
    duration: float,
    before_s: float,
    after_s: float,
    interval_s: float,
    log: Path | None,
    env: dict[str, str] | None = None,
    timeout: float = 2.0,
) -> tuple[Summary, int | None, float]:
    """Probe ``before_s``, run ``command`` (or wait ``duration``), probe ``after_s`` more."""
    since = time.time()
    stop = asyncio.Event()
    task = asyncio.create_task(probe(url, stop, interval_s, timeout))
    await asyncio.sleep(before_s)
    code: int | None = None
    t0 = time.monotonic()
    if command:
        proc = await asyncio.create_subprocess_exec(*command, env=env)
        code = await proc.wait()
    else:
        await asyncio.sleep(duration)
    took = time.monotonic() - t0
    await asyncio.sleep(after_s)
    stop.set()
    attempts = await task
    marks = await asyncio.to_thread(_read_marks, log, since)
    return summarize(attempts, marks), code, took


def _read_marks(log: Path | None, since: float) -> LogMarks | None:
    if log is None or not log.exists():
        return None
    return read_log_marks(log.read_text(errors="replace"), since)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    ap.add_argument("--interval-ms", type=float, default=20.0)
    ap.add_argument("--timeout-s", type=float, default=2.0, help="an attempt fails after this")
    ap.add_argument("--before-s", type=float, default=1.0, help="probe this long first")
    ap.add_argument("--after-s", type=float, default=2.0, help="and this long after")
    ap.add_argument("--duration", type=float, default=None, help="no command: probe this long")
    ap.add_argument("--log", type=Path, default=DEFAULT_LOG, help="the gateway log to read")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here as well")
    ap.add_argument("command", nargs="*", help="default: scripts/stack.py restart gateway")
    args = ap.parse_args()
    command = args.command or (
        None
        if args.duration is not None
        else [sys.executable, str(ROOT / "scripts" / "stack.py"), "restart", "gateway"]
    )
    print(
        f"probing {args.url} every {args.interval_ms:.0f} ms"
        + (f": {' '.join(command)}" if command else "")
    )
    summary, code, took = asyncio.run(
        measure(
            args.url,
            command,
            args.duration or 0.0,
            args.before_s,
            args.after_s,
            args.interval_ms / 1000,
            args.log,
            timeout=args.timeout_s,
        )
    )
    if command:
        print(f"command exited {code} after {took:.2f} s")
    for line in summary.lines():
        print(line)
    if args.json:
        args.json.write_text(json.dumps({**asdict(summary), "command_exit": code}, indent=2))
    if code:
        return code
    return 3 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
