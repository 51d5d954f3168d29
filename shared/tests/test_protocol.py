"""Wire models of the node channel and the capability rule N1 (no Redis)."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lingua_shared.protocol import (
    NODE_INBOUND,
    CapabilityByType,
    CapabilityError,
    InstalledService,
    LanguageCapabilities,
    NodeInbound,
    NodeRegister,
    derive_capabilities,
)


def node(
    asr: list[str] | None = None,
    sem: list[str] | None = None,
    *,
    asr_ready: bool = True,
    sem_ready: bool = True,
    **over: Any,
) -> NodeRegister:
    """A registration with ASR and Semantic ready unless told otherwise."""
    fields: dict[str, Any] = {
        "node_id": "gpu-1",
        "capability_by_type": [
            CapabilityByType(type="asr", ready=asr_ready),
            CapabilityByType(type="semantic", ready=sem_ready),
        ],
        "language_capabilities": LanguageCapabilities(
            asr_languages=["en", "zh"] if asr is None else asr,
            semantic_languages=["en", "zh"] if sem is None else sem,
        ),
    }
    fields.update(over)
    return NodeRegister(**fields)


def rejected(reg: NodeRegister) -> CapabilityError:
    with pytest.raises(CapabilityError) as exc:
        derive_capabilities(reg)
    assert isinstance(exc.value, ValueError)
    return exc.value


# --- N1: ASR and Semantic are mandatory ----------------------------------------------------
def test_a_complete_node_is_accepted() -> None:
    caps = derive_capabilities(
        node(
            ["en", "zh", "ja"],
            ["zh", "en"],
            region="EU",
            gpu_tier="A100",
            max_concurrent_jobs=8,
            heartbeat_interval_ms=1000,
        )
    )
    assert caps.lang_sets == [["en", "zh"]]
    assert (caps.region, caps.gpu_tier, caps.capacity) == ("eu", "a100", 8)
    assert caps.services == {"asr": ["en", "ja", "zh"], "semantic": ["en", "zh"]}
    assert caps.heartbeat_interval_ms == 1000


def test_defaults() -> None:
    caps = derive_capabilities(
        node(), default_region="r0", default_gpu_tier="g0", default_capacity=3
    )
    assert (caps.region, caps.gpu_tier, caps.capacity) == ("r0", "g0", 3)
    assert caps.heartbeat_interval_ms is None


@pytest.mark.parametrize(
    ("reg", "missing_words", "present_words"),
    [
        (node(asr_ready=False), ["ready ASR"], ["Semantic"]),
        (node(asr=[]), ["ASR languages"], ["Semantic"]),
        (node(sem_ready=False), ["ready Semantic"], ["ASR"]),
        (node(sem=[]), ["Semantic languages"], ["ASR"]),
        (node(asr=[], sem=[]), ["ASR languages", "Semantic languages"], ["ready"]),
        (
            node(capability_by_type=[CapabilityByType(type="asr", ready=True)]),
            ["ready Semantic"],
            ["ASR"],
        ),
        (node(capability_by_type=[]), ["ready ASR", "ready Semantic"], ["languages"]),
        (
            NodeRegister(node_id="bare"),
            ["ready ASR", "ASR languages", "ready Semantic", "Semantic languages"],
            [],
        ),
    ],
    ids=[
        "asr-not-ready",
        "asr-no-langs",
        "sem-not-ready",
        "sem-no-langs",
        "no-langs",
        "sem-absent",
        "no-services",
        "empty",
    ],
)
def test_n1_rejects_and_names_what_is_missing(
    reg: NodeRegister, missing_words: list[str], present_words: list[str]
) -> None:
    err = rejected(reg)
    assert len(err.missing) == len(missing_words)
    for word in missing_words:
        assert word in err.message
        assert any(word in m for m in err.missing)
    for word in present_words:
        assert not any(word in m for m in err.missing), word


def test_installed_services_count_when_capability_by_type_is_silent() -> None:
    reg = node(
        capability_by_type=None,
        installed_services=[
            InstalledService(type="asr", status="running"),
            InstalledService(type="semantic", status="READY"),
        ],
    )
    assert derive_capabilities(reg).lang_sets == [["en", "zh"]]
    stopped = node(
        capability_by_type=None,
        installed_services=[
            InstalledService(type="asr", status="running"),
            InstalledService(type="semantic", status="stopped"),
        ],
    )
    assert any("Semantic" in m for m in rejected(stopped).missing)


def test_capability_by_type_wins_over_installed_services() -> None:
    reg = node(
        capability_by_type=[
            CapabilityByType(type="asr", ready=False),
            CapabilityByType(type="semantic", ready=True),
        ],
        installed_services=[InstalledService(type="asr", status="running")],
    )
    assert any("ASR" in m for m in rejected(reg).missing)


def test_one_ready_entry_of_a_type_is_enough() -> None:
    reg = node(
        capability_by_type=[
            CapabilityByType(type="asr", ready=False),
            CapabilityByType(type="asr", ready=True),
            CapabilityByType(type="semantic", ready=True),
        ]
    )
    assert derive_capabilities(reg).lang_sets == [["en", "zh"]]


def test_optional_services_are_listed_when_ready() -> None:
    reg = node(
        capability_by_type=[
            CapabilityByType(type=t, ready=True) for t in ("asr", "semantic", "tts", "nmt")
        ],
        language_capabilities=LanguageCapabilities(
            asr_languages=["en", "zh"], semantic_languages=["en", "zh"], tts_languages=["ZH", "en"]
        ),
    )
    services = derive_capabilities(reg).services
    assert services["tts"] == ["en", "zh"]
    assert services["nmt"] == []


# --- language sets -------------------------------------------------------------------------
def test_derived_set_is_the_asr_semantic_intersection() -> None:
    caps = derive_capabilities(node(["en", "zh", "ja", "fr"], ["ja", "en", "zh", "de"]))
    # one set covering every shared language: superset matching serves each pair from it
    assert caps.lang_sets == [["en", "ja", "zh"]]


def test_language_codes_are_normalized() -> None:
    caps = derive_capabilities(node([" EN ", "pt_BR", "zh"], ["en", "pt-br", "ZH"]))
    assert caps.lang_sets == [["en", "pt-br", "zh"]]


@pytest.mark.parametrize(
    ("asr", "sem"), [(["en", "zh"], ["en", "ja"]), (["en"], ["en"]), (["fr", "de"], ["en", "zh"])]
)
def test_fewer_than_two_shared_languages_is_rejected(asr: list[str], sem: list[str]) -> None:
    err = rejected(node(asr, sem))
    assert "fewer than two" in err.message
    assert err.missing


def test_too_many_shared_languages_needs_explicit_sets() -> None:
    langs = ["en", "zh", "ja", "fr", "de", "es", "it", "ko", "ru"]
    assert "lang_sets" in rejected(node(langs, langs)).message
    caps = derive_capabilities(node(langs, langs, lang_sets=[["en", "zh"], langs[:8]]))
    assert caps.lang_sets == [sorted(langs[:8]), ["en", "zh"]]


def test_explicit_lang_sets_are_normalized_deduplicated_and_sorted() -> None:
    caps = derive_capabilities(
        node(
            ["en", "ja", "zh"],
            ["en", "ja", "zh"],
            lang_sets=[["zh", "EN"], ["ja", "en", "zh"], ["en", "zh"], ["zh", "en", "zh"]],
        )
    )
    assert caps.lang_sets == [["en", "ja", "zh"], ["en", "zh"]]


def test_explicit_lang_sets_must_be_supported_by_asr_and_semantic() -> None:
    err = rejected(node(["en", "ja", "zh"], ["en", "zh"], lang_sets=[["en", "ja"]]))
    assert "['ja']" in err.message and "do not both support" in err.message
    assert err.missing == ["ASR and Semantic support for ja"]


def test_node_id_with_a_trailing_newline_is_rejected() -> None:
    assert "invalid node_id" in rejected(node(node_id="n1\n")).message


@pytest.mark.parametrize(
    ("lang_sets", "words"),
    [
        ([["en"]], "at least two"),
        ([["en", "EN"]], "at least two"),
        ([["en", "zh", "ja", "fr", "de", "es", "it", "ko", "ru"]], "more than 8"),
        ([["en", "zh"]] * 17, "too many"),
        ([["en", "english"]], "invalid language code"),
        ([["en", "zh:cn"]], "invalid language code"),
    ],
)
def test_explicit_lang_sets_validation(lang_sets: list[list[str]], words: str) -> None:
    assert words in rejected(node(lang_sets=lang_sets)).message


@pytest.mark.parametrize(
    "code",
    [
        "e",
        "english",
        "en-",
        "en--us",
        "en-u",
        "123",
        "z1",
        "en us",
        "en:us",
        "{en}",
        "en-abcdefghi",
        "",
    ],
)
def test_invalid_language_codes_are_rejected(code: str) -> None:
    err = rejected(node(["en", "zh", code], ["en", "zh"]))
    assert "invalid language code" in err.message


@pytest.mark.parametrize("node_id", ["", "a:b", "{x}", "-lead", "n" * 65, "with space", "ü"])
def test_invalid_node_id_is_rejected(node_id: str) -> None:
    assert "node_id" in rejected(node(node_id=node_id)).message


@pytest.mark.parametrize("node_id", [None, "n", "N_1.a-b", "x" * 64])
def test_valid_node_ids(node_id: str | None) -> None:
    derive_capabilities(node(node_id=node_id))


@pytest.mark.parametrize("what", ["region", "gpu_tier"])
@pytest.mark.parametrize("value", ["eu:west", "{eu}", "eu west", "-eu", "x" * 33, "é"])
def test_invalid_labels_are_rejected(what: str, value: str) -> None:
    assert what in rejected(node(**{what: value})).message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrent_jobs", 0),
        ("max_concurrent_jobs", 257),
        ("max_concurrent_jobs", -1),
        ("heartbeat_interval_ms", 99),
        ("heartbeat_interval_ms", 600_001),
    ],
)
def test_numeric_bounds(field: str, value: int) -> None:
    assert field in rejected(node(**{field: value})).message


LANGS = st.lists(
    st.sampled_from(["en", "zh", "ja", "fr", "de", "es", "it", "ko", "ru", "pt-br"]), max_size=10
)


@settings(max_examples=100, deadline=None)
@given(asr=LANGS, sem=LANGS)
def test_derived_set_property(asr: list[str], sem: list[str]) -> None:
    shared = sorted(set(asr) & set(sem))
    reg = node(asr, sem)
    if not asr or not sem or not 2 <= len(shared) <= 8:
        with pytest.raises(CapabilityError):
            derive_capabilities(reg)
        return
    caps = derive_capabilities(reg)
    assert caps.lang_sets == [shared]
    assert caps.services["asr"] == sorted(set(asr))
    assert caps.services["semantic"] == sorted(set(sem))


# --- NODE_INBOUND: the gateway's decoder for everything a node sends -----------------------
SAMPLES: dict[str, dict[str, Any]] = {
    "node_register": {
        "type": "node_register",
        "node_id": "gpu-1",
        "version": "2.1",
        "capability_schema_version": "2.0",
        "platform": "linux",
        "hardware": {"cpu_cores": 16, "memory_gb": 64, "gpus": [{"name": "A100"}]},
        "installed_models": [],
        "features_supported": {},
        "capability_by_type": [{"type": "asr", "ready": True}],
        "language_capabilities": {"asr_languages": ["en"], "semantic_languages": ["en"]},
        "lang_sets": [["en", "zh"]],
        "max_concurrent_jobs": 4,
    },
    "node_heartbeat": {
        "type": "node_heartbeat",
        "node_id": "gpu-1",
        "timestamp": 1_700_000_000_000,
        "resource_usage": {"cpu_percent": 12.5, "mem_percent": 40, "running_jobs": 1},
    },
    "job_ack": {"type": "job_ack", "job_id": "j1", "attempt_id": 2, "node_id": "gpu-1"},
    "job_started": {"type": "job_started", "job_id": "j1"},
    "job_result": {
        "type": "job_result",
        "job_id": "j1",
        "success": False,
        "utterance_index": 3,
        "error": {"code": "MODEL_NOT_AVAILABLE", "message": "loading"},
    },
    "asr_partial": {"type": "asr_partial", "job_id": "j1", "text": "hel", "is_final": False},
    "node_error": {"type": "node_error", "code": "MODEL_NOT_AVAILABLE", "node_id": "gpu-1"},
    "error": {"type": "error", "code": "INVALID_MESSAGE", "message": "bad frame"},
}

WRONG_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("node_register", {"max_concurrent_jobs": "many"}),
    ("node_register", {"max_concurrent_jobs": 2.5}),
    ("node_register", {"lang_sets": "en,zh"}),
    ("node_register", {"lang_sets": [["en", 7]]}),
    ("node_register", {"node_id": 42}),
    ("node_register", {"capability_by_type": [{"type": "asr", "ready": "perhaps"}]}),
    ("node_register", {"language_capabilities": {"asr_languages": "en"}}),
    ("node_register", {"hardware": {"cpu_cores": "eight"}}),
    ("node_register", {"accept_public_jobs": "sometimes"}),
    ("node_heartbeat", {"timestamp": "now"}),
    ("node_heartbeat", {"resource_usage": {"cpu_percent": "hot"}}),
    ("node_heartbeat", {"resource_usage": [1, 2]}),
    ("node_heartbeat", {"node_id": None}),
    ("job_ack", {"attempt_id": "first"}),
    ("job_ack", {"job_id": 123}),
    ("job_started", {"job_id": ["j1"]}),
    ("job_result", {"success": "maybe"}),
    ("job_result", {"utterance_index": 1.5}),
    ("job_result", {"processing_time_ms": "fast"}),
    ("job_result", {"error": {"code": 5}}),
    ("asr_partial", {"is_final": "sometimes"}),
    ("asr_partial", {"text": 5}),
    ("node_error", {"details": "not a dict"}),
    ("error", {"message": None}),
]

MISSING_REQUIRED: list[tuple[str, str]] = [
    ("node_heartbeat", "node_id"),
    ("job_ack", "job_id"),
    ("job_started", "job_id"),
    ("job_result", "job_id"),
    ("asr_partial", "job_id"),
    ("node_error", "code"),
    ("error", "code"),
    ("error", "message"),
]


def inbound_types() -> set[str]:
    union = typing.get_args(NodeInbound)[0]
    return {cls.model_fields["type"].default for cls in typing.get_args(union)}


def test_samples_cover_every_inbound_type() -> None:
    assert set(SAMPLES) == inbound_types()


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_samples_decode_to_their_model(kind: str) -> None:
    msg = NODE_INBOUND.validate_json(json.dumps(SAMPLES[kind]).encode())
    assert msg.type == kind


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_unknown_fields_are_accepted_and_kept(kind: str) -> None:
    payload = {**SAMPLES[kind], "x_future": {"a": [1, 2]}, "turn_id": "t-9"}
    msg = NODE_INBOUND.validate_json(json.dumps(payload).encode())
    assert msg.model_extra == {"x_future": {"a": [1, 2]}, "turn_id": "t-9"}
    wire = msg.to_wire()
    assert wire["x_future"] == {"a": [1, 2]} and wire["turn_id"] == "t-9"
    assert NODE_INBOUND.validate_python(wire).to_wire() == wire


def test_unknown_fields_in_nested_objects_are_accepted() -> None:
    payload = {
        **SAMPLES["node_heartbeat"],
        "resource_usage": {"cpu_percent": 1.0, "npu_percent": 7},
        "capability_by_type": [{"type": "asr", "ready": True, "impl": "whisper"}],
    }
    msg = NODE_INBOUND.validate_python(payload)
    assert msg.to_wire()["resource_usage"]["npu_percent"] == 7
    assert msg.to_wire()["capability_by_type"][0]["impl"] == "whisper"


@pytest.mark.parametrize(
    ("kind", "patch"), WRONG_TYPES, ids=[f"{k}-{next(iter(p))}" for k, p in WRONG_TYPES]
)
def test_wrong_field_types_are_rejected(kind: str, patch: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NODE_INBOUND.validate_json(json.dumps({**SAMPLES[kind], **patch}).encode())


@pytest.mark.parametrize(("kind", "field"), MISSING_REQUIRED)
def test_missing_required_fields_are_rejected(kind: str, field: str) -> None:
    payload = {k: v for k, v in SAMPLES[kind].items() if k != field}
    with pytest.raises(ValidationError):
        NODE_INBOUND.validate_python(payload)


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "node_explode", "node_id": "x"},
        {"node_id": "gpu-1"},
        {
            "type": "job_assign",
            "job_id": "j",
            "session_id": "s",
            "utterance_index": 0,
            "src_lang": "en",
            "tgt_lang": "zh",
        },  # outbound only: a node may not send it
        [],
        "node_register",
    ],
)
def test_unknown_or_missing_type_is_rejected(payload: Any) -> None:
    with pytest.raises(ValidationError):
        NODE_INBOUND.validate_json(json.dumps(payload).encode())


def test_malformed_json_is_rejected() -> None:
    with pytest.raises(ValidationError):
        NODE_INBOUND.validate_json(b'{"type": "node_heartbeat", "node_id": ')


def test_known_types_are_derived_from_the_unions() -> None:
    """The sets each end checks a frame's ``type`` against come from the models' unions."""
    from lingua_shared.protocol import NODE_INBOUND_TYPES, NODE_OUTBOUND_TYPES
    from lingua_shared.protocol.session import SESSION_INBOUND_TYPES, SESSION_OUTBOUND_TYPES

    assert NODE_INBOUND_TYPES == {
        "node_register", "node_heartbeat", "job_ack", "job_started", "job_result",
        "asr_partial", "node_error", "error",
    }  # fmt: skip
    assert NODE_OUTBOUND_TYPES == {
        "node_register_ack", "job_assign", "job_cancel", "node_control", "error"
    }  # fmt: skip
    assert SESSION_INBOUND_TYPES == {
        "session_init", "audio_chunk", "utterance", "client_heartbeat", "session_close", "error"
    }  # fmt: skip
    assert SESSION_OUTBOUND_TYPES == {
        "session_init_ack", "translation_result", "asr_partial", "missing_result", "ui_event",
        "server_heartbeat", "session_close_ack", "error",
    }  # fmt: skip


def test_close_codes_are_the_documented_ones() -> None:
    from lingua_shared.protocol import GRACEFUL_NODE_CLOSES, CloseCode

    assert {c.value for c in CloseCode} == {
        1000, 1001, 1005, 1006, 1007, 1008, 1009, 1011, 1012, 4000, 4001, 4008
    }  # fmt: skip
    assert GRACEFUL_NODE_CLOSES == {1000, 1001, 1005}
    assert str(CloseCode.REPLACED) == "4001"  # metric labels and logs read the number
