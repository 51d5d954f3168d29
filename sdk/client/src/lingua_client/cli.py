"""``lingua-client stream``: send a WAV through a session and check every utterance's answer.

It is both a demo (no FILE: the shipped ``demo.wav``) and a smoke test for a deployment, so
the exit code is the verdict: 0 when every utterance got exactly one answer
(``--strict``: exactly one translation), 1 when not or when the session failed, 2 for bad
arguments or unusable audio (found before any connection).

Answers are printed as they arrive while the audio is still being sent, as a live client
would see them; ``--timeout-s`` bounds the wait for the remaining answers after the last
utterance was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lingua_client.audio import (
    Segment,
    VadSettings,
    demo_wav,
    read_wav,
    split_utterances,
    whole_file,
)
from lingua_client.config import DEFAULT_URL, SessionConfig
from lingua_client.connect import open_session
from lingua_client.errors import AudioError, ClientError, ConfigError
from lingua_client.jsonlog import LEVELS, setup_logging
from lingua_client.report import event_line, summarize
from lingua_client.session import ClientSession

PROG = "lingua-client"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Lingua scheduler client.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{stream}")
    st = sub.add_parser("stream", help="stream a WAV file through one session")
    st.add_argument("file", nargs="?", help="16 kHz mono PCM16 WAV (default: the demo)")
    st.add_argument("--url", default=DEFAULT_URL, help=f"gateway (default {DEFAULT_URL})")
    st.add_argument("--src", help="source language of a one-way session (default en)")
    st.add_argument("--tgt", help="target language of a one-way session (default zh)")
    st.add_argument("--two-way", metavar="A,B", help="a two_way_auto session between A and B")
    how = st.add_mutually_exclusive_group()
    how.add_argument("--binary", action="store_true", help="binary audio frames")
    how.add_argument("--whole", action="store_true", help="one `utterance` message each")
    st.add_argument("--realtime", action="store_true", help="pace audio at real time")
    st.add_argument("--chunk-ms", type=int, default=100, help="audio per chunk (100)")
    st.add_argument("--pace-ms", type=float, default=5.0, help="pause between chunks (5)")
    st.add_argument("--no-vad", action="store_true", help="send the file as one utterance")
    st.add_argument(
        "--vad-threshold", type=float, default=300.0, help="speech RMS threshold, int16 scale (300)"
    )
    st.add_argument(
        "--min-silence-ms", type=int, default=400, help="a pause this long ends an utterance (400)"
    )
    st.add_argument(
        "--max-utterance-ms", type=int, default=10_000, help="longer speech is cut (10000)"
    )
    st.add_argument(
        "--timeout-s", type=float, default=30.0, help="wait for answers after the last send (30)"
    )
    st.add_argument("--json", action="store_true", help="one JSON object per event")
    st.add_argument(
        "--strict", action="store_true", help="exit 1 unless every answer is a translation"
    )
    st.add_argument("--partials", action="store_true", help="print asr_partial events too")
    st.add_argument("--trace-id", help="trace id of the session (default: a new UUID)")
    st.add_argument(
        "--token",
        default=os.environ.get("LINGUA_CLIENT_TOKEN"),
        help="client token when the gateway requires auth (default: $LINGUA_CLIENT_TOKEN)",
    )
    st.add_argument("--log-level", choices=LEVELS, default="quiet", help="JSON logs on stderr")
    return parser


@dataclass
class Plan:
    url: str
    config: SessionConfig
    segments: list[Segment]
    source: str
    args: argparse.Namespace
    problems: list[str] = field(default_factory=list)


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Everything checked before connecting: languages, settings, the audio and its cuts."""
    if args.two_way and (args.src or args.tgt):
        raise ConfigError("use either --src/--tgt or --two-way, not both")
    if args.timeout_s <= 0:
        raise ConfigError("--timeout-s must be > 0")
    extra: dict[str, Any] = {"chunk_ms": args.chunk_ms, "pace_ms": args.pace_ms,
                             "realtime": args.realtime}  # fmt: skip
    if args.trace_id:
        extra["trace_id"] = args.trace_id
    if args.token:
        extra["token"] = args.token
    if args.two_way:
        langs = [p.strip() for p in args.two_way.split(",") if p.strip()]
        if len(langs) != 2:
            raise ConfigError(f"--two-way needs two languages like en,zh, got {args.two_way!r}")
        cfg = SessionConfig.two_way(langs[0], langs[1], **extra)
    else:
        cfg = SessionConfig.one_way(args.src or "en", args.tgt or "zh", **extra)
    cfg.validate()
    path = Path(args.file) if args.file else demo_wav()
    pcm = read_wav(path)
    max_ms = min(args.max_utterance_ms, cfg.max_utterance_ms)
    if args.no_vad:
        segments = whole_file(pcm, max_ms)
    else:
        vad = VadSettings(threshold_rms=args.vad_threshold, min_silence_ms=args.min_silence_ms,
                          max_utterance_ms=max_ms)  # fmt: skip
        segments = split_utterances(pcm, vad)
    if not segments:
        raise AudioError(f"{path}: no speech above --vad-threshold {args.vad_threshold:g} "
                         "(lower it, or use --no-vad)")  # fmt: skip
    longest = max(len(seg.pcm) for seg in segments)
    if args.whole and longest * 4 // 3 + 1024 > cfg.max_frame_bytes:
        raise AudioError(f"with --whole an utterance must fit one {cfg.max_frame_bytes}-byte "
                         "frame: lower --max-utterance-ms (10000 fits)")  # fmt: skip
    return Plan(args.url, cfg, segments, path.name, args)


class Printer:
    """Writes events and the summary to stdout, as text lines or JSON objects."""

    def __init__(self, as_json: bool, partials: bool) -> None:
        self.as_json = as_json
        self.partials = partials

    def emit(self, text: str, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False, default=str) if self.as_json else text
        print(line, flush=True)


async def send_all(s: ClientSession, plan: Plan) -> None:
    """Send every segment; with ``--realtime`` the pauses between them are kept too."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    a = plan.args
    for seg in plan.segments:
        if a.realtime:
            await asyncio.sleep(max(0.0, start + seg.start_ms / 1000 - loop.time()))
        await s.send_utterance(seg.pcm, binary=a.binary, whole=a.whole, realtime=a.realtime)


async def receive(s: ClientSession, plan: Plan, out: Printer) -> None:
    """Print events until each segment has an answer, or ``--timeout-s`` after sending."""
    loop = asyncio.get_running_loop()
    sender = asyncio.create_task(send_all(s, plan))
    waiting = True
    try:
        async with asyncio.timeout(None) as limit:

            def sending_done(task: asyncio.Task[None]) -> None:
                if not waiting:
                    return  # the wait is over; the timeout context is gone
                # a failed send ends the wait at once: the session is broken
                failed = not task.cancelled() and task.exception() is not None
                limit.reschedule(loop.time() + (0 if failed else plan.args.timeout_s))

            sender.add_done_callback(sending_done)
            try:
                async for ev in s.events(expect=len(plan.segments)):
                    if ev.kind == "asr_partial" and not (out.partials or out.as_json):
                        continue
                    out.emit(event_line(ev), ev.to_json())
            finally:
                waiting = False
    except TimeoutError:
        if not sender.done() or sender.exception() is None:
            plan.problems.append(f"gave up waiting for answers after {plan.args.timeout_s:g} s")
    except ClientError as exc:
        plan.problems.append(str(exc))
    finally:
        if not sender.done():
            sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    if not sender.cancelled() and (exc := sender.exception()) is not None:
        plan.problems.append(f"sending failed: {exc}")


async def stream(plan: Plan) -> int:
    out = Printer(plan.args.json, plan.args.partials)
    try:
        s = await open_session(plan.url, plan.config)
    except ClientError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    cfg = plan.config
    langs = f"{cfg.src_lang} -> {cfg.tgt_lang}" if cfg.mode == "one_way" else (
        f"{cfg.lang_a} <-> {cfg.lang_b}")  # fmt: skip
    audio_ms = sum(seg.duration_ms for seg in plan.segments)
    a = plan.args
    via = "binary frames" if a.binary else "utterance messages" if a.whole else "audio_chunk"
    out.emit(
        f"session {s.session_id}  {langs}  {len(plan.segments)} utterances "
        f"({audio_ms / 1000:.1f} s) from {plan.source} via {via}",
        {"type": "session", "session_id": s.session_id, "trace_id": cfg.trace_id,
         "mode": cfg.mode, "utterances": len(plan.segments), "file": plan.source},
    )  # fmt: skip
    try:
        await receive(s, plan, out)
    finally:
        try:
            await s.close()
        except ClientError as exc:
            plan.problems.append(f"close: {exc}")
    summary = summarize(s.tracker, len(s.session_errors))
    out.emit(summary.line(), summary.to_json(a.strict))
    for problem in plan.problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    return 0 if summary.ok(a.strict) and not plan.problems else 1


async def run(args: argparse.Namespace) -> int:
    """The command for parsed arguments, inside a running event loop (tests call this; it
    leaves logging alone, which :func:`main` sets up)."""
    try:
        plan = plan_from_args(args)
    except (ConfigError, AudioError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return await stream(plan)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m lingua_client``."""
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    setup_logging(args.log_level)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
