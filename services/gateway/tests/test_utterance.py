"""UtteranceAccumulator: where utterances end, with the audio bytes untouched (J1, J9)."""

from __future__ import annotations

import struct

import pytest

from lingua_gateway.utterance import (
    CUT_BUFFER_FULL,
    CUT_FINAL,
    CUT_MAX_BYTES,
    CUT_MAX_DURATION,
    OPUS,
    PCM16,
    UtteranceAccumulator,
)


def acc(fmt: str, *, max_ms=1000, max_bytes=1_000_000, buffer_bytes=2_000_000):
    return UtteranceAccumulator(
        fmt, 16000, max_ms=max_ms, max_bytes=max_bytes, buffer_bytes=buffer_bytes
    )


def opus_packets(n: int, size: int = 5, start: int = 0) -> bytes:
    """``n`` pairs of [u16 LE length][packet]; packet k is ``size`` bytes of (start+k)%256."""
    return b"".join(struct.pack("<H", size) + bytes([(start + k) % 256]) * size for k in range(n))


def test_pcm16_final_returns_the_audio_exactly_and_empty_final_is_nothing():
    a = acc(PCM16)
    assert a.finish() is None  # nothing buffered: not an utterance
    chunks = [bytes([i]) * 3200 for i in range(3)]  # 3 x 100 ms
    for c in chunks:
        assert a.add(c).cuts == []
    cut = a.finish()
    assert cut is not None and cut.reason == CUT_FINAL
    assert cut.audio == b"".join(chunks) and cut.duration_ms == 300
    assert a.finish() is None and a.buffered == 0


def test_pcm16_is_cut_at_the_maximum_duration_and_the_rest_starts_the_next():
    a = acc(PCM16, max_ms=1000)  # 1 s = 32000 bytes
    stream = bytes(range(256)) * 150  # 38400 bytes = 1.2 s
    added = a.add(stream[:20000])
    assert added.cuts == []
    added = a.add(stream[20000:])
    assert [c.reason for c in added.cuts] == [CUT_MAX_DURATION]
    assert added.cuts[0].audio == stream[:32000] and added.cuts[0].duration_ms == 1000
    rest = a.finish()
    assert rest is not None and rest.audio == stream[32000:] and rest.duration_ms == 200


def test_pcm16_exactly_at_the_limit_is_not_cut_and_a_big_chunk_makes_several():
    a = acc(PCM16, max_ms=100)  # 3200 bytes
    assert a.add(b"\x00" * 3200).cuts == []
    added = a.add(b"\x01" * 7000)
    assert [len(c.audio) for c in added.cuts] == [3200, 3200, 3200]
    assert a.buffered == 600


def test_pcm16_bytes_bound_cuts_on_a_sample_boundary():
    a = acc(PCM16, max_ms=60_000, max_bytes=1001)
    added = a.add(b"\x02" * 2500)
    assert [(c.reason, len(c.audio)) for c in added.cuts] == [(CUT_MAX_BYTES, 1000)] * 2
    assert a.buffered == 500


def test_opus_counts_packets_and_cuts_between_pairs():
    a = acc(OPUS, max_ms=200)  # 10 packets of 20 ms
    stream = opus_packets(13)
    assert a.add(stream[: 7 * 7]).cuts == []
    assert a.duration_ms == 140
    added = a.add(stream[7 * 7 :])
    assert len(added.cuts) == 1
    cut = added.cuts[0]
    assert cut.reason == CUT_MAX_DURATION and cut.duration_ms == 200
    assert cut.audio == opus_packets(10)  # whole pairs, bytes untouched
    rest = a.finish()
    assert rest is not None and rest.audio == opus_packets(3, start=10) and rest.duration_ms == 60


def test_opus_pairs_may_span_chunks():
    a = acc(OPUS, max_ms=100)  # 5 packets
    stream = opus_packets(12, size=9)
    cuts = []
    for i in range(0, len(stream), 4):  # 4-byte chunks split length prefixes and packets
        cuts += a.add(stream[i : i + 4]).cuts
    final = a.finish()
    assert final is not None
    assert [(c.duration_ms, len(c.audio)) for c in cuts] == [(100, 55), (100, 55)]
    assert b"".join(c.audio for c in cuts) + final.audio == stream
    assert final.duration_ms == 40


def test_opus_bytes_bound_cuts_at_the_last_pair_that_fits():
    a = acc(OPUS, max_ms=60_000, max_bytes=30)  # pairs of 7 bytes: 4 fit (28)
    added = a.add(opus_packets(9))
    assert [(c.reason, len(c.audio)) for c in added.cuts] == [(CUT_MAX_BYTES, 28)] * 2
    assert a.buffered == 7


def test_opus_trailing_partial_pair_goes_with_the_final_cut():
    a = acc(OPUS)
    a.add(opus_packets(2) + b"\x05\x00\xaa")  # a third pair announced, 1 of 5 bytes sent
    cut = a.finish()
    assert cut is not None and cut.audio.endswith(b"\x05\x00\xaa") and cut.duration_ms == 40


def test_buffer_bound_cuts_what_is_buffered_and_drops_an_oversize_chunk():
    a = acc(PCM16, max_ms=60_000, max_bytes=10_000, buffer_bytes=4000)
    assert a.add(b"\x01" * 3000).cuts == []
    added = a.add(b"\x02" * 2000)
    assert added.overflow and added.dropped_bytes == 0
    assert [(c.reason, c.audio) for c in added.cuts] == [(CUT_BUFFER_FULL, b"\x01" * 3000)]
    assert a.buffered == 2000
    added = a.add(b"\x03" * 5000)  # alone larger than the bound
    assert added.overflow and added.dropped_bytes == 5000
    assert [c.audio for c in added.cuts] == [b"\x02" * 2000] and a.buffered == 0


def test_unknown_format_is_refused():
    with pytest.raises(ValueError):
        acc("mp3")
