"""WAV input and silence splitting: turn a recording into the utterances a session sends.

The gateway and every node take 16 kHz mono PCM16, and the client resamples nothing: a
resampler in the client would be a second, untested audio path, while ``sox`` does it right
in one command. So a WAV in any other format is refused with that command in the message.

Splitting is a plain energy VAD (20 ms frames, an RMS threshold, a minimum silence): enough
for clean recordings and for the demo; a real app would end utterances at its own turn
boundaries (a push-to-talk release, a better VAD) and call ``send_utterance`` itself.
"""

from __future__ import annotations

import math
import sys
import wave
from array import array
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lingua_client.config import BYTES_PER_MS, SAMPLE_RATE
from lingua_client.errors import AudioError

CONVERT_HINT = "convert it with: sox in.wav -r 16000 -c 1 -b 16 out.wav"
FRAME_MS = 20


def demo_wav() -> Path:
    """The shipped demo recording: three tone "utterances" separated by 0.6 s of silence."""
    return Path(str(resources.files("lingua_client") / "data" / "demo.wav"))


def read_wav(path: str | Path) -> bytes:
    """The PCM16 samples of a 16 kHz mono 16-bit WAV, or :class:`AudioError` saying why not."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            comp, frames = w.getcomptype(), w.getnframes()
            data = w.readframes(frames)
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (wave.Error, EOFError) as exc:
        # the stdlib reads only integer PCM WAV: float, A-law, MP3-in-WAV... end up here
        raise AudioError(f"{path}: not a PCM WAV file ({exc}); {CONVERT_HINT}") from None
    problems = []
    if comp != "NONE":
        problems.append(f"compression {comp}")
    if rate != SAMPLE_RATE:
        problems.append(f"{rate} Hz (need {SAMPLE_RATE})")
    if channels != 1:
        problems.append(f"{channels} channels (need mono)")
    if width != 2:
        problems.append(f"{width * 8}-bit samples (need 16-bit)")
    if problems:
        raise AudioError(f"{path}: {', '.join(problems)}; {CONVERT_HINT}")
    if not data:
        raise AudioError(f"{path}: the WAV file holds no audio")
    return data[: len(data) - len(data) % 2]


def write_wav(path: str | Path, pcm: bytes) -> None:
    """Write PCM16 mono 16 kHz (for tests and for saving what was sent)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)


def duration_ms(pcm: bytes) -> float:
    return len(pcm) / BYTES_PER_MS


@dataclass(frozen=True)
class VadSettings:
    """Energy VAD knobs. ``threshold_rms`` is on the int16 scale (300 is about -40 dBFS)."""

    threshold_rms: float = 300.0
    min_silence_ms: int = 400  # a pause this long ends an utterance
    min_speech_ms: int = 60  # shorter bursts (clicks) are dropped
    padding_ms: int = 100  # silence kept on each side, so ASR sees the onset
    max_utterance_ms: int = 10_000  # longer speech is cut (keeps `whole` frames small)


@dataclass(frozen=True)
class Segment:
    """One utterance found in a recording: byte offsets into the PCM and its audio."""

    start: int
    end: int
    pcm: bytes

    @property
    def start_ms(self) -> float:
        return self.start / BYTES_PER_MS

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / BYTES_PER_MS


def frame_rms(pcm: bytes, frame_ms: int = FRAME_MS) -> list[float]:
    """RMS of each ``frame_ms`` frame (the last, partial frame included)."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if sys.byteorder == "big":  # pragma: no cover - WAV is little-endian
        samples.byteswap()
    step = SAMPLE_RATE * frame_ms // 1000
    out = []
    for i in range(0, len(samples), step):
        frame = samples[i : i + step]
        out.append(math.sqrt(sum(x * x for x in frame) / len(frame)))
    return out


def split_utterances(pcm: bytes, vad: VadSettings | None = None) -> list[Segment]:
    """Split PCM16 at pauses of at least ``min_silence_ms``; an empty list if all is silent."""
    vad = vad or VadSettings()
    if vad.min_silence_ms < FRAME_MS or vad.max_utterance_ms < 10 * FRAME_MS:
        raise AudioError(f"min_silence_ms must be >= {FRAME_MS} and max_utterance_ms >= 200")
    voiced = [rms >= vad.threshold_rms for rms in frame_rms(pcm)]
    frame_bytes = FRAME_MS * BYTES_PER_MS
    quiet_frames = vad.min_silence_ms // FRAME_MS
    runs: list[tuple[int, int]] = []  # [first voiced frame, last voiced frame + 1)
    start = last = None
    for i, on in enumerate(voiced):
        if not on:
            continue
        if start is not None and last is not None and i - last - 1 >= quiet_frames:
            runs.append((start, last + 1))
            start = None
        if start is None:
            start = i
        last = i
    if start is not None and last is not None:
        runs.append((start, last + 1))
    pad = vad.padding_ms // FRAME_MS
    segments = []
    for first, stop in runs:
        if (stop - first) * FRAME_MS < vad.min_speech_ms:
            continue
        lo = max(0, first - pad) * frame_bytes
        hi = min(len(pcm), (stop + pad) * frame_bytes)
        segments.extend(cut_long(pcm, lo, hi, vad.max_utterance_ms))
    return segments


def cut_long(pcm: bytes, lo: int, hi: int, max_ms: int) -> list[Segment]:
    """``pcm[lo:hi]`` as segments of at most ``max_ms`` (the gateway would cut it otherwise,
    numbering the pieces itself, and the client's indices would no longer match)."""
    step = max_ms * BYTES_PER_MS
    return [Segment(a, min(hi, a + step), pcm[a : min(hi, a + step)]) for a in range(lo, hi, step)]


def whole_file(pcm: bytes, max_ms: int = VadSettings.max_utterance_ms) -> list[Segment]:
    """``--no-vad``: the recording as one utterance (cut only where it is too long)."""
    return cut_long(pcm, 0, len(pcm), max_ms)
