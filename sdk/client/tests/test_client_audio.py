"""WAV validation, the energy VAD, the shipped demo recording, and the pure helpers."""

from __future__ import annotations

import runpy
import struct
import wave
from pathlib import Path

import pytest

from lingua_client import (
    AudioError,
    ConfigError,
    SessionConfig,
    VadSettings,
    demo_wav,
    read_wav,
    split_utterances,
    whole_file,
    write_wav,
)
from lingua_client.frames import split_chunks
from lingua_client.report import percentile
from lingua_client.tracker import UtteranceTracker

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_wav.py"


def pcm_of(*parts: tuple[int, int]) -> bytes:
    """(milliseconds, sample value) runs: value 0 is silence, 3000 is loud."""
    return b"".join(struct.pack("<h", value) * (16 * ms) for ms, value in parts)


def wav(path: Path, *, rate=16000, channels=1, width=2, frames=1600) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x10" * width * channels * frames)
    return path


def test_vad_splits_the_demo_into_exactly_three_utterances():
    pcm = read_wav(demo_wav())
    assert len(pcm) == 6 * 32000
    segments = split_utterances(pcm)
    assert len(segments) == 3
    # each is 1.4 s of tones plus 100 ms of padding either side, 2 s apart
    assert [round(s.start_ms) for s in segments] == [200, 2200, 4200]
    assert [round(s.duration_ms) for s in segments] == [1600, 1600, 1600]
    assert all(s.pcm == pcm[s.start : s.end] for s in segments)


def test_the_demo_is_small_deterministic_package_data(tmp_path):
    shipped = demo_wav()
    assert shipped.is_file() and shipped.stat().st_size < 250_000
    out = tmp_path / "again.wav"
    runpy.run_path(str(SCRIPT), run_name="make_demo")["write"](out)
    assert out.read_bytes() == shipped.read_bytes()


def test_vad_rules_pauses_clicks_long_speech_and_silence():
    loud, quiet = 3000, 20
    short_pause = pcm_of((300, loud), (300, quiet), (300, loud))
    assert len(split_utterances(short_pause)) == 1  # 300 ms < min_silence_ms
    long_pause = pcm_of((300, loud), (500, quiet), (300, loud))
    assert len(split_utterances(long_pause)) == 2
    assert len(split_utterances(long_pause, VadSettings(min_silence_ms=600))) == 1
    click = pcm_of((500, 0), (20, loud), (500, 0), (200, loud), (100, 0))
    [seg] = split_utterances(click)
    assert seg.start_ms == 920  # the 20 ms click is dropped; 100 ms padding before speech
    assert split_utterances(pcm_of((1000, quiet))) == []
    long_speech = split_utterances(pcm_of((2500, loud)), VadSettings(max_utterance_ms=1000))
    assert [s.duration_ms for s in long_speech] == [1000, 1000, 500]
    assert [s.duration_ms for s in whole_file(pcm_of((2500, 0)), 2000)] == [2000, 500]
    assert split_utterances(long_pause, VadSettings(threshold_rms=5000)) == []


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"rate": 44100}, "44100 Hz"),
        ({"channels": 2}, "2 channels"),
        ({"width": 1}, "8-bit"),
        ({"frames": 0}, "no audio"),
    ],
)
def test_wav_format_errors_say_how_to_convert(tmp_path, kw, fragment):
    path = wav(tmp_path / "in.wav", **kw)
    with pytest.raises(AudioError, match=fragment) as info:
        read_wav(path)
    if kw.get("frames") != 0:
        assert "sox in.wav -r 16000 -c 1 -b 16 out.wav" in str(info.value)


def test_unreadable_files_are_audio_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        read_wav(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"ID3 this is an mp3, honest")
    with pytest.raises(AudioError, match="not a PCM WAV"):
        read_wav(junk)
    good = tmp_path / "good.wav"
    write_wav(good, pcm_of((100, 5)))
    assert read_wav(good) == pcm_of((100, 5))


def test_chunking_never_splits_a_sample_and_keeps_every_byte():
    data = bytes(range(256)) * 25
    for size in (2, 3, 100, 3200, 10_000):
        chunks = split_chunks(data, size)
        assert b"".join(chunks) == data
        assert all(len(c) % 2 == 0 for c in chunks)


def test_config_validation_catches_unworkable_sessions():
    SessionConfig().validate()
    assert SessionConfig().heartbeat_interval_s == 30  # lingua's web client beats every 30 s
    for bad in (
        SessionConfig.one_way("en", "en"),
        SessionConfig(mode="one_way", src_lang="auto"),
        SessionConfig(mode="three_way"),
        SessionConfig.two_way("en", "en"),
        SessionConfig(chunk_ms=5),
        SessionConfig(chunk_ms=2000, max_frame_bytes=64_000),
        SessionConfig(init_timeout_s=0),
        SessionConfig(audio_format="opus"),
    ):
        with pytest.raises(ConfigError):
            bad.validate()


def test_tracker_counts_answers_per_index():
    t = UtteranceTracker()
    assert [t.begin(100, 0.0), t.begin(100, 0.0)] == [0, 1]
    t.finish(0, 1.0)
    assert t.pending() == [0] and t.latency_ms(1, 2.0) is None  # #1 not finished yet
    assert t.answer(0, "translation_result", 1.25) == 250
    assert t.answer(7, "error", 2.0) is None and t.unexpected == [(7, "error")]
    t.finish(1, 2.0)
    t.answer(1, "missing_result", 2.5)
    t.answer(1, "translation_result", 2.6)
    assert t.duplicates() == [1] and not t.exactly_once()
    assert t.records[1].latency_ms == 500  # from the first answer
    clean = UtteranceTracker()
    clean.finish(clean.begin(100, 0.0), 0.5)
    clean.answer(0, "translation_result", 0.7)
    assert clean.exactly_once()
    clean.answer(3, "translation_result", 0.8)  # an index this client never sent
    assert not clean.exactly_once()
    assert percentile([5.0, 1.0, 3.0, 2.0], 50) == 2.0 and percentile([], 50) is None
