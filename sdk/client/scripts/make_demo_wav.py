"""Generate ``src/lingua_client/data/demo.wav``: the recording ``lingua-client stream`` plays.

The demo must work on any machine without a microphone or a speech corpus, and its shape
must be known exactly so that tests can check the client's silence splitting: three
"utterances" (sequences of tones shaped like syllables) separated by 0.6 s of near-silence,
16 kHz mono PCM16, 6 s in all (~190 KB). The output is deterministic (a fixed LCG for the
background hiss), so re-running the script reproduces the committed file byte for byte.

    python sdk/client/scripts/make_demo_wav.py [OUT.wav]
"""

from __future__ import annotations

import math
import struct
import sys
import wave
from pathlib import Path

RATE = 16000
LEAD_S = 0.3
GAP_S = 0.6
NOTE_S = 0.35
FADE_S = 0.02
AMPLITUDE = 0.3 * 32767
HISS = 40  # peak of the background noise: far below the client's VAD threshold
# Three utterances of four "syllables" each (Hz): distinct, so each is recognisable by ear.
UTTERANCES = (
    (220.0, 277.2, 329.6, 277.2),
    (392.0, 349.2, 311.1, 261.6),
    (261.6, 329.6, 392.0, 523.3),
)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "lingua_client" / "data" / "demo.wav"


class Hiss:
    """A tiny deterministic noise source (an LCG), so the file is the same on every run."""

    def __init__(self, seed: int = 12345) -> None:
        self.state = seed

    def next(self) -> int:
        self.state = (1103515245 * self.state + 12345) % 2**31
        return self.state % (2 * HISS + 1) - HISS


def silence(seconds: float, hiss: Hiss) -> list[int]:
    return [hiss.next() for _ in range(round(seconds * RATE))]


def note(freq: float, hiss: Hiss) -> list[int]:
    """One syllable: a tone with its second harmonic and raised-cosine fades."""
    n = round(NOTE_S * RATE)
    fade = round(FADE_S * RATE)
    out = []
    for i in range(n):
        t = i / RATE
        edge = min(i, n - 1 - i)
        env = 0.5 - 0.5 * math.cos(math.pi * edge / fade) if edge < fade else 1.0
        value = math.sin(2 * math.pi * freq * t) + 0.3 * math.sin(4 * math.pi * freq * t)
        out.append(round(AMPLITUDE / 1.3 * env * value) + hiss.next())
    return out


def samples() -> list[int]:
    hiss = Hiss()
    out = silence(LEAD_S, hiss)
    for k, freqs in enumerate(UTTERANCES):
        if k:
            out += silence(GAP_S, hiss)
        for freq in freqs:
            out += note(freq, hiss)
    out += silence(LEAD_S, hiss)
    return out


def write(path: Path) -> int:
    data = samples()
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(struct.pack(f"<{len(data)}h", *data))
    return len(data)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_OUT
    n = write(path)
    print(f"wrote {path} ({n / RATE:.2f} s, {path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
