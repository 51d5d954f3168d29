"""Gateway recipes of docs/reliability.md: W1 (oversize frames) and W4 (slow readers).

(W2, W3, W5 and W6 belong to the authentication, limits and hostile-input work.)
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.faults.workload import Session, metric
from tests.support.agents import node_processes, node_url
from tests.support.invariants import settle_idle
from tests.support.sessions import session_url
from tests.support.stack import JOB_SERVICES, start_all

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MAX_FRAME = 65_536  # LINGUA_WS_MAX_FRAME_BYTES of the fault suite


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def oversize_close_code(url: str, first: str | None) -> int | None:
    async with connect(url, max_size=None) as ws:
        if first is not None:
            await ws.send(first)
            await asyncio.wait_for(ws.recv(), 5)
        await ws.send(b"\x00" * (MAX_FRAME + 1))
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            pass
        return ws.close_code


async def test_w1_oversize_frames_are_cheap_to_refuse(fstack, fredis):
    """W1: frames of max_size + 1 bytes on both endpoints -> close 1009, gateway memory flat
    (300 such frames, 19.7 MB in all, leave its RSS within a few MB)."""
    start_all(fstack, ("nm-1", "node-manager"), ("gw-a", "gateway"))
    gw = fstack.procs["gw-a"]
    init = json.dumps({"type": "session_init", "client_version": "w1", "platform": "t",
                       "mode": "one_way", "src_lang": "zh", "tgt_lang": "en",
                       "audio_format": "pcm16"})  # fmt: skip
    # warm up (imports, buffers) before measuring
    for _ in range(5):
        await oversize_close_code(node_url(fstack, "gw-a"), None)
    before = rss_kib(gw.proc.pid)
    codes: list[int | None] = []
    for i in range(300):
        url = session_url(fstack, "gw-a") if i % 2 else node_url(fstack, "gw-a")
        codes.append(await oversize_close_code(url, init if i % 2 else None))
    after = rss_kib(gw.proc.pid)
    sent_mib = 300 * (MAX_FRAME + 1) / 2**20
    growth_mib = (after - before) / 1024
    print(
        f"W1 frames={len(codes)} close_1009={codes.count(1009)} sent={sent_mib:.1f}MiB "
        f"gateway_rss_growth={growth_mib:.1f}MiB"
    )
    assert codes.count(1009) == len(codes), set(codes)
    assert growth_mib < sent_mib / 4, "the gateway kept what it refused"
    await settle_idle(fredis, fstack.keys)


SLOW, NORMAL, WAVE = 20, 200, 25
HEARTBEATS = 2_000
W4_CLOSE_BOUND_S = 10.0  # every slow reader closed this long after it stopped reading
W4_WATCH_S = 20.0


async def _slow_ones_closed(stack, t0: float, watch_s: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds from ``t0`` until the gateway holds only the normal clients (nan: not within
    ``watch_s``)."""
    while time.monotonic() - t0 < watch_s:
        open_ = await asyncio.to_thread(
            metric, stack, "gw-b", "lingua_gateway_connections", {"endpoint": "session"}
        )
        if open_ <= NORMAL:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    return float("nan")


async def _round(sessions: list[Session], index: int) -> list[float]:
    """Each session sends one utterance (in waves); the seconds until its answer."""
    latencies: list[float] = []

    async def one(s: Session) -> None:
        t0 = time.monotonic()
        await s.utterance(index)
        await s.collect(index + 1, timeout=20)
        assert len(s.answers) == index + 1, s.answers[-1:]
        latencies.append(time.monotonic() - t0)

    for i in range(0, len(sessions), WAVE):
        await asyncio.gather(*(one(s) for s in sessions[i : i + WAVE]))
    return latencies


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


async def test_w4_slow_readers_cannot_pin_the_gateway(fstack, fredis):
    """W4: 20 clients that never read among 200 normal ones -> the slow ones are closed
    within the send timeout / keepalive bound (asserted generously); every normal client
    answered; p99 of the normal clients with and without the slow ones printed (latencies
    are not asserted)."""
    send_timeout_s = 1.0
    start_all(fstack, *JOB_SERVICES, LINGUA_WS_SEND_TIMEOUT_S=str(send_timeout_s))
    async with node_processes(
        fstack, fredis, ("node-w4a", {"capacity": 16}), ("node-w4b", {"capacity": 16})
    ):
        url = session_url(fstack, "gw-b")
        normal = [await Session.open(url) for _ in range(NORMAL)]
        base = await _round(normal, 0)
        slow = [await Session.open(url) for _ in range(SLOW)]
        for s in slow:
            # stops reading at the TCP level (no pongs either), then asks for ~1 MB of
            # answers: each client_heartbeat is answered with a server_heartbeat
            s.ws.transport.pause_reading()
            beat = json.dumps({"type": "client_heartbeat", "session_id": s.session_id})
            for i in range(HEARTBEATS):
                await s.ws.send(beat)
                if i % 100 == 99:
                    # a send does not suspend while the socket takes the bytes: without this
                    # the flood would hold this process's loop for longer than the 0.5 s
                    # ping timeout, and the *normal* clients (same loop) would miss pongs
                    await asyncio.sleep(0)
        t_slow = time.monotonic()
        # watched from now, while the normal clients' loaded round runs
        watch = asyncio.create_task(_slow_ones_closed(fstack, t_slow, W4_WATCH_S))
        loaded = await _round(normal, 1)
        closed_after = await watch
        print(
            f"W4 normal={NORMAL} slow={SLOW} slow_closed_after={closed_after:.1f}s "
            f"(send timeout {send_timeout_s}s, keepalive 0.5+0.5 s) "
            f"p99_without={p99(base) * 1000:.0f}ms p99_with={p99(loaded) * 1000:.0f}ms "
            f"normal_answered={sum(len(s.answers) for s in normal)}/{2 * NORMAL}"
        )
        assert all(len(s.answers) == 2 and s.duplicates() == 0 for s in normal)
        assert not math.isnan(closed_after), f"slow readers still open after {W4_WATCH_S} s"
        # the bound: send timeout 1 s or keepalive 0.5 + 0.5 s; 10 s is noise-proof, and a
        # gateway that waits on a slow reader without a timeout fails it
        assert closed_after <= W4_CLOSE_BOUND_S, closed_after
        for s in normal:
            await s.close()
        for s in slow:
            s.ws.transport.abort()
    await settle_idle(fredis, fstack.keys, timeout=20)
