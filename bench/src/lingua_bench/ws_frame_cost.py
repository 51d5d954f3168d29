"""``python -m lingua_bench.ws_frame_cost``: what one web-client audio frame costs a WebSocket
server on this machine before the gateway does anything with it.

Most of the gateway's CPU per lingua utterance goes to the 12-20 ``audio_chunk`` frames of it.
This measures the floor under that: a server process with the gateway's WebSocket library and
settings (``websockets``' asyncio server, uvloop, no compression, a ping every 5 s) that does
one of three things with each frame, and the CPU it spends per frame:

- ``recv``: reads the frame and drops it (the library and the event loop alone);
- ``parse``: also what the gateway's fast path does to every chunk (``orjson`` decode, the
  field checks, the base64 decode, appending the bytes to a buffer);
- the gateway itself is measured by the ``lingua`` scenario (``cpu_ms_per_utterance``).

The client (this process) opens ``--connections`` sockets and sends the frames lingua's web
client sends (JSON, 13 Opus packets of 600-1,000 bytes, base64), paced to ``--rate`` frames a
second in all, for ``--seconds``; the server's CPU seconds over that window (``/proc``) divided
by the frames it received is the figure. Loopback only; figures, not assertions.

    python -m lingua_bench.ws_frame_cost --out bench/results/ws-frame-cost-<date>.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from lingua_bench.procstat import cpu_seconds
from lingua_bench.report import write_report
from lingua_shared.devstack import free_port
from lingua_shared.protocol.webclient import opus_chunk

MODES = ("recv", "parse")


# -- the server process ------------------------------------------------------------------------
async def serve(port: int, mode: str) -> None:
    from websockets.asyncio.server import ServerConnection
    from websockets.asyncio.server import serve as ws_serve

    loads, b64 = orjson.loads, base64.b64decode

    async def handler(ws: ServerConnection) -> None:
        buf = bytearray()
        async for raw in ws:
            if mode == "parse":
                obj = loads(raw)
                if type(obj) is dict and obj.get("type") == "audio_chunk":
                    payload = obj.get("payload")
                    if type(payload) is str and type(obj.get("seq")) is int:
                        buf += b64(payload)
                        if obj.get("is_final"):
                            buf.clear()

    async with ws_serve(
        handler, "127.0.0.1", port, compression=None, ping_interval=5.0, ping_timeout=5.0
    ):
        await asyncio.Event().wait()


# -- the client (this process) -----------------------------------------------------------------
async def drive(port: int, connections: int, rate: float, seconds: float, pid: int) -> dict:
    from websockets.asyncio.client import connect

    rng = random.Random(7)
    payloads = [base64.b64encode(opus_chunk(rng)).decode() for _ in range(64)]
    socks = []
    for _ in range(50):  # the server takes a moment to listen
        try:
            socks.append(await connect(f"ws://127.0.0.1:{port}", compression=None))
            break
        except OSError:
            await asyncio.sleep(0.1)
    socks += [
        await connect(f"ws://127.0.0.1:{port}", compression=None) for _ in range(connections - 1)
    ]
    frames = [
        f'{{"type":"audio_chunk","session_id":"s-{i:04d}","seq":{{}},"is_final":false,'
        f'"payload":"{payloads[i % len(payloads)]}"}}'
        for i in range(connections)
    ]
    await asyncio.sleep(1.0)  # connections settled before the window
    loop = asyncio.get_running_loop()
    cpu0, t0 = cpu_seconds(pid), loop.time()
    sent = 0
    while (now := loop.time()) < t0 + seconds:
        due = int((now - t0) * rate)
        while sent < due:
            i = sent % connections
            await socks[i].send(frames[i].replace("{}", str(sent), 1))
            sent += 1
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.5)  # what is in flight reaches the server
    cpu1, t1 = cpu_seconds(pid), loop.time()
    for ws in socks:
        await ws.close()
    cpu = (cpu1 or 0.0) - (cpu0 or 0.0)
    return {
        "frames": sent,
        "seconds": round(t1 - t0, 2),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_share": round(cpu / (t1 - t0), 3),
        "us_per_frame": round(cpu * 1e6 / sent, 1) if sent else None,
    }


def measure(mode: str, connections: int, rate: float, seconds: float) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "lingua_bench.ws_frame_cost", "--serve", str(port), mode]
    )
    try:
        from lingua_shared.runtime import install_uvloop

        install_uvloop()
        return asyncio.run(drive(port, connections, rate, seconds, server.pid))
    finally:
        server.terminate()
        server.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lingua_bench.ws_frame_cost", description=__doc__)
    ap.add_argument("--serve", nargs=2, metavar=("PORT", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--connections", type=int, default=400, help="client sockets")
    ap.add_argument("--rate", type=float, default=1600.0, help="frames a second, in all")
    ap.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    ap.add_argument("--out", type=Path, help="JSON report (default: stdout)")
    args = ap.parse_args(argv)
    if args.serve:
        from lingua_shared.runtime import install_uvloop

        install_uvloop()
        asyncio.run(serve(int(args.serve[0]), args.serve[1]))
        return 0
    report: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m lingua_bench.ws_frame_cost " + " ".join(argv or sys.argv[1:]),
        "connections": args.connections,
        "rate_per_s": args.rate,
        "load_avg_at_end": None,
        "modes": {},
    }
    for mode in MODES:
        report["modes"][mode] = measure(mode, args.connections, args.rate, args.seconds)
        print(f"ws_frame_cost: {mode}: {report['modes'][mode]}", file=sys.stderr)
    report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
