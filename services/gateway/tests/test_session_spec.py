"""session_init validation: one-way and two-way sessions, and every refusal typed."""

from __future__ import annotations

import pytest

from lingua_gateway.session_spec import spec_from_init
from lingua_shared.errors import InvalidMessage, UnsupportedFeature
from lingua_shared.protocol.session import SessionInit


def init(**kw) -> SessionInit:
    return SessionInit.model_validate({"type": "session_init", **kw})


def test_one_way_defaults_to_opus_and_keeps_the_clients_trace_id():
    spec = spec_from_init(init(src_lang="zh", tgt_lang="en", trace_id="t-1"))
    assert (spec.mode, spec.src_lang, spec.tgt_lang) == ("one_way", "zh", "en")
    assert (spec.lang_a, spec.lang_b) == (None, None)
    assert (spec.audio_format, spec.sample_rate, spec.trace_id) == ("opus", 16000, "t-1")


def test_language_codes_are_normalised_like_node_languages():
    spec = spec_from_init(
        init(mode="one_way", src_lang="PT_BR", tgt_lang="en", audio_format="pcm16")
    )
    assert spec.src_lang == "pt-br" and spec.audio_format == "pcm16"
    assert len(spec.trace_id) == 36  # a fresh uuid4 when the client sent none


def test_two_way_as_lingua_web_client_sends_it():
    spec = spec_from_init(
        init(
            mode="two_way_auto",
            src_lang="auto",
            tgt_lang="en",
            lang_a="zh",
            lang_b="en",
            auto_langs=["zh", "en"],
            tenant_id=None,
            dialect=None,
            features={},
        )
    )
    assert (spec.mode, spec.src_lang, spec.tgt_lang) == ("two_way_auto", "auto", "en")
    assert (spec.lang_a, spec.lang_b) == ("zh", "en")
    assert spec.record()["lang_a"] == "zh"
    assert spec_from_init(init(mode="two_way_auto", lang_a="ja", lang_b="zh")).tgt_lang == "zh"


@pytest.mark.parametrize(
    ("fields", "error", "fragment"),
    [
        ({"src_lang": "auto", "tgt_lang": "en"}, InvalidMessage, "only for two_way_auto"),
        ({"tgt_lang": "en"}, InvalidMessage, "only for two_way_auto"),  # src defaults to auto
        ({"src_lang": "zh"}, InvalidMessage, "needs tgt_lang"),
        ({"src_lang": "zh", "tgt_lang": "EN!"}, InvalidMessage, "invalid tgt_lang"),
        ({"src_lang": "zh", "tgt_lang": "zh"}, InvalidMessage, "both 'zh'"),
        ({"mode": "two_way_auto", "lang_a": "zh"}, InvalidMessage, "needs lang_b"),
        ({"mode": "two_way_auto", "lang_a": "zh", "lang_b": "zh"}, InvalidMessage, "both"),
        (
            {"mode": "two_way_auto", "lang_a": "zh", "lang_b": "en", "src_lang": "zh"},
            InvalidMessage,
            "must be 'auto'",
        ),
        (
            {"mode": "two_way_auto", "lang_a": "zh", "lang_b": "en", "tgt_lang": "ja"},
            InvalidMessage,
            "neither lang_a nor lang_b",
        ),
        ({"mode": "three_way", "src_lang": "zh", "tgt_lang": "en"}, UnsupportedFeature, "mode"),
        ({"src_lang": "zh", "tgt_lang": "en", "audio_format": "mp3"}, UnsupportedFeature, "mp3"),
        ({"src_lang": "zh", "tgt_lang": "en", "sample_rate": 48000}, UnsupportedFeature, "48000"),
    ],
)
def test_refusals_are_typed_and_say_why(fields, error, fragment):
    with pytest.raises(error) as info:
        spec_from_init(init(**fields))
    assert fragment in info.value.message
