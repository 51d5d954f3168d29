"""Fuzz the binary frame parser of ``/ws/session`` (docs/protocol.md, "Binary audio frames").

Property: any bytes either parse into a frame that rebuilds to the same bytes (the reserved
header byte aside) or are refused with ``InvalidMessage``; any other exception is a crash.

    .venv/bin/python fuzz/fuzz_session_frames.py -max_total_time=30
    .venv/bin/python fuzz/fuzz_session_frames.py -runs=100000

Any libFuzzer flag works (``-help=1``); see fuzz/README.md.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from lingua_gateway.session_frames import parse_client_frame
    from lingua_shared.errors import InvalidMessage
    from lingua_shared.protocol.session import FRAME_FINAL, build_binary_frame

RESERVED_BYTE = 11  # audio/ping/pong header: type, sid_len, seq u32, ts u32, is_final, reserved


def test_one_input(data: bytes) -> None:
    try:
        frame = parse_client_frame(data)
    except InvalidMessage:
        return
    expected = data
    if data[0] != FRAME_FINAL:
        expected = data[:RESERVED_BYTE] + b"\x00" + data[RESERVED_BYTE + 1 :]
    rebuilt = build_binary_frame(frame)
    if rebuilt != expected:
        raise AssertionError(f"frame does not round-trip: {data!r} -> {frame!r} -> {rebuilt!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
