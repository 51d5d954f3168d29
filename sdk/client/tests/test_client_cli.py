"""The CLI as a user runs it: a subprocess against the fake gateway; exit codes and output."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import wave

import pytest

from lingua_client.cli import build_parser, main, run

LINE = re.compile(r'^#(\d+)\s+(\d+) ms\s+asr="[^"]*"\s+->\s+"[^"]*"$')


async def cli(*argv: str, limit_s: float = 15) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lingua_client", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(limit_s):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_in_process(capsys, *argv: str) -> tuple[int, str, str]:
    """The same command in this process (no interpreter start-up): for the many cases."""
    capsys.readouterr()
    code = await run(build_parser().parse_args(["stream", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


async def test_stream_demo_prints_a_line_per_result_and_exits_0(gateway):
    code, out, err = await cli("stream", "--url", gateway.url, "--src", "en", "--tgt", "ja")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("session s-test-0  en -> ja  3 utterances (4.8 s) from demo.wav")
    results = [m for line in lines if (m := LINE.match(line))]
    assert sorted(int(m.group(1)) for m in results) == [0, 1, 2]
    assert lines[-1].startswith(
        "summary: 3 utterances sent, 3 results, 0 errors, 0 missing; latency p50 "
    )
    assert err == ""  # quiet by default
    assert [len(u) for u in gateway.conns[0].utterances] == [51_200] * 3
    assert gateway.of_type("session_close")  # closed with the handshake
    assert gateway.conns[0].init["tgt_lang"] == "ja"


async def test_errors_and_missing_are_answers_but_not_under_strict(gateway, capsys):
    def policy(sid, index, audio):
        if index == 1:
            return [(0.0, {"type": "missing_result", "session_id": sid, "utterance_index": 1,
                           "reason": "gap_timeout", "created_at_ms": 1})]  # fmt: skip
        if index == 2:
            return [(0.0, {"type": "error", "code": "JOB_TIMEOUT", "message": "too slow",
                           "details": {"utterance_index": 2}})]  # fmt: skip
        return [(0.0, gateway.translation(sid, index, audio))]

    gateway.policy = policy
    code, out, _ = await cli_in_process(capsys, "--url", gateway.url, "--binary",
                                        "--two-way", "en,zh")  # fmt: skip
    assert code == 0
    assert re.search(r"^#1\s+\d+ ms\s+missing \(gap_timeout\)$", out, re.M)
    assert re.search(r'^#2\s+\d+ ms\s+error JOB_TIMEOUT: "too slow"$', out, re.M)
    assert "1 results, 1 errors, 1 missing" in out
    code, _, _ = await cli_in_process(capsys, "--url", gateway.url, "--strict")
    assert code == 1


async def test_a_lost_or_doubled_answer_exits_1(gateway, capsys):
    gateway.policy = lambda sid, i, a: [] if i == 1 else [(0.0, gateway.translation(sid, i, a))]
    code, out, err = await cli("stream", "--url", gateway.url, "--timeout-s", "0.5")
    assert code == 1
    assert "no answer for #1" in out and "gave up waiting for answers after 0.5 s" in err
    twice = gateway.translation
    gateway.policy = lambda sid, i, a: [(0.0, twice(sid, i, a))] * (2 if i == 0 else 1)
    code, out, _ = await cli_in_process(capsys, "--url", gateway.url, "--whole")
    assert code == 1 and "answered twice: #0" in out


async def test_json_mode_prints_one_object_per_event(gateway, tmp_path):
    path = tmp_path / "one.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x10" * 16000)  # 1 s of a constant: one utterance with --no-vad
    code, out, err = await cli("stream", str(path), "--url", gateway.url, "--json", "--no-vad",
                             "--log-level", "debug", "--realtime", "--chunk-ms", "250")  # fmt: skip
    assert code == 0
    objs = [json.loads(line) for line in out.splitlines()]
    assert [o["type"] for o in objs] == ["session", "translation_result", "summary"]
    event = objs[1]
    assert event["utterance_index"] == 0 and event["session_id"] == "s-test-0"
    assert event["latency_ms"] >= 0 and event["text_translated"] == "译文 0"
    assert objs[2]["ok"] is True and objs[2]["sent"] == 1
    assert len(gateway.of_type("audio_chunk")) == 5  # 4 chunks of 250 ms and the final
    logs = [json.loads(line) for line in err.splitlines()]  # debug logs: JSON on stderr only
    assert any(e["msg"] == "session opened" and e["session_id"] == "s-test-0" for e in logs)


async def test_gateway_failures_exit_1(gateway, capsys):
    gateway.init_reply = lambda msg, n: {"type": "error", "code": "UNSUPPORTED_FEATURE",
                                         "message": "no two-way here"}  # fmt: skip
    code, out, err = await cli_in_process(capsys, "--url", gateway.url, "--two-way", "en,zh")
    assert code == 1 and out == "" and "UNSUPPORTED_FEATURE: no two-way here" in err
    code, _, err = await cli_in_process(capsys, "--url", "ws://127.0.0.1:1/ws/session")
    assert code == 1 and "cannot connect" in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--two-way", "en"], "two languages"),
        (["--src", "en", "--two-way", "en,zh"], "not both"),
        (["--src", "zh"], "both 'zh'"),
        (["--chunk-ms", "5"], "chunk_ms"),
        (["nope.wav"], "no such file"),
        (["--vad-threshold", "30000"], "no speech"),
    ],
)
async def test_bad_arguments_and_audio_exit_2(argv, fragment, capsys):
    code, _, err = await cli_in_process(capsys, "--url", "ws://127.0.0.1:1/ws/session", *argv)
    assert code == 2 and fragment in err


async def test_usage_errors_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["stream", "--binary", "--whole"])
    assert info.value.code == 2
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(b"\x00" * 400)
    code, _, err = await cli_in_process(capsys, str(stereo))
    assert code == 2 and "sox in.wav -r 16000 -c 1 -b 16 out.wav" in err
