"""Throwing frames at a real gateway and telling an answer from silence.

Each input is followed by a *probe* (a frame of an unknown type carrying a token); the
gateway handles a connection's frames in order, so everything it answers to the input comes
before the probe's ``error``. An input is then answered (a typed ``error`` with a protocol
code, or its normal reply), answered by a close code the protocol defines, or silent, which
only a few valid messages may be (a heartbeat, audio before its end, a peer's ``error``).
Every wait is bounded: silence where an answer is due fails, it never hangs.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from lingua_shared.protocol import ErrorCode

REPLY_TIMEOUT_S = 5.0
# The suite's frame limits (its stacks run with them: see the conftest)
SESSION_FRAME_LIMIT = 16_384  # over it: MESSAGE_TOO_LARGE, the connection stays open
HARD_FRAME_LIMIT = 65_536  # over it: close 1009 (websockets' max_size)
PROTOCOL_CODES = frozenset(c.value for c in ErrorCode) - {ErrorCode.INTERNAL_ERROR.value}


@dataclass(frozen=True)
class Frame:
    """One input: ``payload`` as a text or binary frame (``raw_text``: bytes sent in a text
    frame, possibly not UTF-8)."""

    payload: str | bytes
    kind: str = "text"  # text | binary | raw_text

    def __repr__(self) -> str:
        shown = self.payload[:120] if len(self.payload) <= 2_000 else self.payload[:60]
        return f"Frame({self.kind}, {len(self.payload)} bytes: {shown!r})"


@dataclass
class Outcome:
    """What came back for one input: replies before the probe's answer, or a close code."""

    replies: list[Any] = field(default_factory=list)
    close_code: int | None = None
    asynchronous: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.replies if isinstance(r, dict) and r.get("type") == "error"]


async def send(ws: ClientConnection, frame: Frame) -> None:
    if frame.kind == "raw_text":
        await ws.send(frame.payload, text=True)
    else:
        await ws.send(frame.payload)


def is_async_answer(msg: Any) -> bool:
    """An answer to an utterance (it carries its index): it may come at any time."""
    return isinstance(msg, dict) and "utterance_index" in msg and msg.get("type") != "asr_partial"


async def exchange(ws: ClientConnection, frame: Frame, always_ok: frozenset[str]) -> Outcome:
    """Send ``frame`` then a probe; collect until the probe is answered or the peer closes.

    Messages of a type in ``always_ok`` (sent by the scheduler on its own, e.g. a
    ``node_control``) and answers to utterances are set apart from the input's replies.
    """
    token = f"probe-{uuid.uuid4().hex[:12]}"
    out = Outcome()
    try:
        await send(ws, frame)
        await ws.send(json.dumps({"type": token}))
        while True:
            raw = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S)
            msg = raw if isinstance(raw, bytes) else json.loads(raw)
            if isinstance(msg, dict) and token in str(msg.get("message", "")):
                assert msg.get("code") == "INVALID_MESSAGE", msg
                return out
            if is_async_answer(msg):
                out.asynchronous.append(msg)
            elif not (isinstance(msg, dict) and msg.get("type") in always_ok):
                out.replies.append(msg)
    except ConnectionClosed as exc:
        out.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
        return out
    except TimeoutError:
        raise AssertionError(
            f"no answer within {REPLY_TIMEOUT_S}s to {frame!r} (replies so far: {out.replies})"
        ) from None


def check_typed(outcome: Outcome, frame: Frame) -> None:
    """Every ``error`` carries a protocol code, never INTERNAL_ERROR (an unhandled bug)."""
    for err in outcome.errors:
        assert err.get("code") in PROTOCOL_CODES, (frame, err)
        assert isinstance(err.get("message"), str), (frame, err)


# -- the services ---------------------------------------------------------------------------
def metric_total(base_url: str, name: str) -> float:
    """Sum of every series of a counter on a service's /metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def healthz(base_url: str) -> bool:
    with urllib.request.urlopen(f"{base_url}/healthz", timeout=5) as r:
        return r.status == 200


def log_failures(log_path: Path) -> list[str]:
    """Lines of a service's JSON log that show a bug: a traceback, an exception, an error."""
    bad = []
    for line in log_path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                bad.append(line)
            continue
        if "exc" in doc or doc.get("level") in ("error", "critical"):
            bad.append(line[:2_000])
    return bad


def assert_services_sound(stack: Any) -> None:
    """Every process still runs, answers /healthz, and logged no exception and no error."""
    for name, proc in stack.procs.items():
        assert proc.proc is not None and proc.proc.poll() is None, f"{name} exited"
        assert healthz(proc.base_url), name
        bad = log_failures(proc.log_path)
        assert not bad, f"{name} logged errors:\n" + "\n".join(bad[:10])
