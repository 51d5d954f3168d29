"""Each ``lua/*.lua`` header against its module in ``lingua_shared.scripts``.

The header (purpose line, ``KEYS[i]``, ``built from KEYS[i]``, ``ARGV[i]``, ``Returns:``) is
the only documentation a caller reads, so it must stay true: the numbering has no gaps, the
module's ``args`` produces exactly that many keys and arguments in that order, every code the
script returns is listed, is one ``ScriptCode`` outcome and is handled by ``parse``, every
call goes through the one call path, and the keys built from a declared prefix are layouts of
the key schema (``test_script_keys.py`` checks them against the keys each script really
touches).
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

import pytest

from lingua_shared.errors import ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.scripts import (
    MODULES,
    ScriptCode,
    Scripts,
    find_lua_dir,
    load_source,
)
from lingua_shared.scripts import header as script_header
from lingua_shared.scripts.header import Header, template_regex

LUA_DIR = find_lua_dir()
SCRIPT_NAMES = sorted(p.stem for p in LUA_DIR.glob("*.lua"))

BODY_RETURN_RE = re.compile(r"return\s*\{\s*(-?\d+)\s*,")
INVALID_FIELD_RE = re.compile(r"return\s*\{\s*-1\s*,\s*'([a-z_]+)'\s*\}")


def parse_header(name: str) -> Header:
    return script_header.parse_header(LUA_DIR, name)


# libraries that are a script's body, shared with a script that applies it many times
BODY_LIBS = {"heartbeat_with_pool_assign": "heartbeat"}


def body_of(name: str) -> str:
    """The script's own code: no header, no inlined library (but its body's, if a library
    holds it)."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    if name in BODY_LIBS:
        text += "\n" + (LUA_DIR / "lib" / f"{BODY_LIBS[name]}.lua").read_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith("--"))


# Distinct sample values for every builder parameter, so that a swapped argument shows.
SAMPLES: dict[str, Any] = {
    "node_id": "node-7",
    "now_ms": 1_700_000_000_123,
    "ttl_ms": 45_001,
    "seq": 1_700_000_000_123_001,
    "covers_ms": 1_700_000_000_500,
    "beats": [["node-7", "c-1", "1", "-1", "-1", "-1", "", "", ""]],
    "region": "eu-west",
    "gpu_tier": "a100",
    "lang_sets": [["en", "ja", "zh"]],
    "capacity": 6,
    "services": {"asr": ["en", "zh"], "semantic": ["en", "ja", "zh"]},
    "gateway_id": "gw-3",
    "conn_id": "conn-42",
    "meta": {"version": "1.2.3"},
    "running_jobs": 2,
    "cpu_percent": 11.5,
    "gpu_percent": 22.5,
    "mem_percent": 33.5,
    "max_shard_size": 17,
    "status": "draining",
    "mode": "dropped",
    # job path
    "request_key": "s-1:4",
    "job_id": "j-9",
    "fields": {"session_id": "s-1", "utterance_index": "4"},
    "audio": "QUJD",
    "attempt": 2,
    "lease_ms": 3_001,
    "pair_src": "zh",
    "pair_tgt": "en",
    "policy": "spread",
    "candidates": 8,
    "wait_until_ms": 1_700_000_002_000,
    "retry_ms": 51,
    "deadline_ms": 30_002,
    "outcome": "done",
    "payload": {"type": "translation_result", "utterance_index": 4},
    "gap_ms": 35_003,
    "session_ttl_ms": 600_004,
    "reason": "ack_timeout",
    "max_attempts": 3,
    "session_id": "s-1",
    "claim_ms": 1_005,
    "limit": 99,
    "service": "asr",
    "until_ms": 1_700_000_030_000,
    "field_names": ["region", "capacity"],
    "node_ids": ["node-7", "node-8"],
    "shard_ids": ["en_zh:eu-west:a100:0"],
    "utterance_index": 4,
    "acks": True,
    "public": False,
    "tenant": "tenant-3",
    "earlier": [["j-1", 1], ["j-2", 3]],
    "indices": [2, 4],
    "client": "alice",
}


@pytest.fixture
def offline_scripts() -> Scripts:
    """Scripts without a server: the builders and parsers are pure."""
    s = Scripts.__new__(Scripts)
    s.keys = Keys("test")
    s.lua_dir = LUA_DIR
    return s


def builder(s: Scripts, name: str) -> Any:
    fn = getattr(s, f"{name}_args", None)
    assert fn is not None, f"Scripts has no {name}_args builder"
    return fn


def test_every_script_has_a_wrapper_and_every_wrapper_a_script() -> None:
    assert SCRIPT_NAMES, f"no scripts in {LUA_DIR}"
    assert set(Scripts.NAMES) == set(SCRIPT_NAMES)
    for name in SCRIPT_NAMES:
        assert callable(getattr(Scripts, name, None)), f"Scripts.{name} missing"
        assert callable(getattr(Scripts, f"{name}_args", None)), f"Scripts.{name}_args missing"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_header_numbering_has_no_gaps(name: str) -> None:
    h = parse_header(name)
    assert h.purpose.startswith(f"{name}:"), "purpose line names the script"
    assert [i for i, _, _ in h.keys] == list(range(1, len(h.keys) + 1))
    assert [i for i, _, _ in h.argv] == list(range(1, len(h.argv) + 1))
    assert h.keys and h.argv and h.returns


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_body_uses_exactly_the_declared_keys_and_argv(name: str) -> None:
    h = parse_header(name)
    body = body_of(name)
    used_keys = {int(i) for i in re.findall(r"KEYS\[(\d+)\]", body)}
    used_argv = {int(i) for i in re.findall(r"ARGV\[(\d+)\]", body)}
    assert used_keys == set(range(1, len(h.keys) + 1))
    assert used_argv == set(range(1, len(h.argv) + 1))


def test_library_takes_no_keys_or_argv_of_its_own() -> None:
    for lib in (LUA_DIR / "lib").glob("*.lua"):
        text = lib.read_text()
        assert not re.search(r"\b(KEYS|ARGV)\[", text), f"{lib.name} reads KEYS/ARGV"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_no_keyspace_scans(name: str) -> None:
    source = load_source(LUA_DIR, name)
    assert not re.search(r"redis\.p?call\(\s*'(KEYS|SCAN)'", source, re.IGNORECASE)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_builder_produces_the_header_arity_in_header_order(
    name: str, offline_scripts: Scripts
) -> None:
    h = parse_header(name)
    fn = builder(offline_scripts, name)
    params = list(inspect.signature(fn).parameters)
    assert params == [n for _, n, _ in h.argv], "builder parameters follow ARGV order"
    kw = {p: SAMPLES[p] for p in params}
    keys, args = fn(**kw)
    assert len(keys) == len(h.keys)
    assert len(args) == len(h.argv)
    for (_, arg_name, _), value in zip(h.argv, args, strict=True):
        sample = kw[arg_name]
        if isinstance(sample, dict | list):
            assert json.loads(value) == sample, arg_name
        else:
            assert value == sample, arg_name


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_key_descriptions_match_the_built_keys(name: str, offline_scripts: Scripts) -> None:
    """``KEYS[i] nodes:all`` or ``lingua:v1:{cell}:node:<id>`` describe key i exactly."""
    h = parse_header(name)
    fn = builder(offline_scripts, name)
    keys, _ = fn(**{p: SAMPLES[p] for p in inspect.signature(fn).parameters})
    prefix = offline_scripts.keys.prefix
    for (i, key_name, desc), key in zip(h.keys, keys, strict=True):
        assert key.startswith(prefix), key
        if key_name == "prefix":
            assert key == prefix
        elif ":" in key_name:
            assert key == prefix + key_name, f"KEYS[{i}]"
        template = next((w for w in desc.split() if w.startswith("lingua:v1:")), None)
        if template:
            expected = template.replace("{cell}", "{test}").replace("<id>", SAMPLES["node_id"])
            assert key == expected, f"KEYS[{i}]"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_returned_codes_are_exactly_the_documented_ones(name: str) -> None:
    h = parse_header(name)
    returned = {int(c) for c in BODY_RETURN_RE.findall(body_of(name))}
    assert returned == h.codes
    assert ScriptCode.INVALID_INPUT in h.codes


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_negative_code_is_a_script_code(name: str) -> None:
    values = {int(c) for c in ScriptCode}
    for code in parse_header(name).codes:
        if code < 0:
            assert code in values, f"{name}: {code} not in ScriptCode"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_invalid_input_fields_name_an_argument(name: str) -> None:
    argv_names = {n for _, n, _ in parse_header(name).argv}
    fields = set(INVALID_FIELD_RE.findall(body_of(name)))
    assert fields, "the script validates its input"
    assert fields <= argv_names


PARSERS = {name: module.parse for name, module in MODULES.items()}

# A well-formed reply of each job script for a documented code (shapes from the headers).
JOB_REPLIES: dict[str, Any] = {
    "select_node": lambda c: (
        [c, b"n1", b"gw", b"c1", b"en_zh:eu:a:0", b"acked"] if c == 1 else [c, b"x", 0]
    ),
    "job_release": lambda c: [c, 2, b"n1", b"gw", b"c1"] if c in (1, 2) else [c, b"assigned"],
    "job_finish": lambda c: [c, b"gw", b"c1", 0, b'{"type": "x"}'] if c == 1 else [c, b""],
    "gap_expire": lambda c: (
        [c, b"gw", b"c1", 3, b'{"type": "missing_result"}'] if c == 1 else [c, b""]
    ),
    "utterance_fail": lambda c: [c, b"gw", b"c1", 3, b'{"type": "error"}'] if c == 1 else [c, b""],
    "outbox_ack": lambda c: [c, 2],
    "heartbeats_applied": lambda c: [c, 1_700_000_000_123_001],
    "heartbeat_batch": lambda c: [c, [[1, 1], [-2, b""], [-1, b"node_id"]]],
    "outbox_claim": lambda c: [c, [b"s-1", b"gw", b"c1", [3, b'{"type": "x"}']]],
    "session_bind": lambda c: (
        [c, b"gw", b"c0", [b"mode", b"one_way"], [b"5"], [3, b'{"type": "x"}']]
        if c == 1
        else [c, b""]
    ),
    "nodes_summary": lambda c: [c, 2, 1, 8, 1, 2, [b"eu", 2], [b"a100", 2], [b"n2"], [b"n9"]],
    "pools_summary": lambda c: [c, [3, 2, 12, 1, 1], []],
    "node_lost": lambda c: [c, b"j-1", 1, 2, b"j-2", 2, 3] if c == 1 else [c, b"c2"],
    "slots_reconcile": lambda c: [c, 2, 1],
}


def test_every_script_has_a_parser() -> None:
    assert set(PARSERS) == set(SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_wrapper_handles_every_documented_code(name: str, offline_scripts: Scripts) -> None:
    parse = PARSERS[name]
    for code in sorted(parse_header(name).codes):
        if code == ScriptCode.INVALID_INPUT:
            with pytest.raises(ScriptRejected) as exc:
                parse([code, b"node_id"])
            assert exc.value.details == {"field": "node_id"}
            continue
        if name in ("timers_claim", "nodes_read"):
            continue  # its only code is -1; a success is a plain list of job ids
        filler: Any = 0 if name == "node_offline" else b""
        reply = [code, b"", b""] if name == "register_node_v2" else [code, filler]
        if name in JOB_REPLIES:
            reply = JOB_REPLIES[name](code)
        if name == "heartbeat_with_pool_assign" and code == 1:
            reply = [1, 1]
        result = parse(reply)
        if name == "nodes_summary":
            assert result.by_region == {"eu": 2} and result.unschedulable == ["n2"]
            assert result.invalid == ["n9"]
            continue
        if name == "outbox_claim":
            assert [(p.session_id, p.gateway_id, p.items) for p in result] == [
                ("s-1", "gw", [(3, {"type": "x"})])
            ]
            continue
        if name == "heartbeat_batch":
            alive, gone, bad = result
            assert (alive.code, alive.pools_changed) == (ScriptCode.ALIVE, True)
            assert gone.code == ScriptCode.NOT_REGISTERED
            assert isinstance(bad, ScriptRejected) and bad.details == {"field": "node_id"}
            continue
        if name == "pools_summary":
            assert result[0].members == 3 and result[0].reserved == 1
            assert not result[0].skipped and result[1].skipped
            continue
        if name == "register_node_v2":
            assert result.created is (code == 1)
        else:
            assert result.code == code
        if name in ("job_finish", "gap_expire", "utterance_fail") and code == 1:
            assert result.items and result.gateway_id == "gw"
        if name == "session_bind" and code == 1:
            assert (result.old_conn_id, result.record, result.sent) == (
                "c0",
                {"mode": "one_way"},
                {5},
            )
            assert result.outbox == [(3, {"type": "x"})]


# --- one module per script, one enum of outcomes, one call path --------------------------------
@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_script_has_a_module_of_its_name(name: str) -> None:
    module = MODULES[name]
    assert module.NAME == name
    assert module.__name__ == f"lingua_shared.scripts.{name}"
    assert next(iter(inspect.signature(module.args).parameters)) == "keys"
    assert callable(module.parse) and module.Result is not None
    builder_params = list(inspect.signature(getattr(Scripts, f"{name}_args")).parameters)
    assert builder_params[1:] == list(inspect.signature(module.args).parameters)[1:]


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_documented_code_is_exactly_one_outcome_of_the_enum(name: str) -> None:
    outcomes = ScriptCode.for_script(name)
    assert set(outcomes) == parse_header(name).codes
    for code, member in outcomes.items():
        assert ScriptCode.of(name, code) is member and member == code
        assert member.meaning, member
    with pytest.raises(ValueError):
        ScriptCode.of(name, 99)


def test_no_two_outcomes_of_a_script_share_a_code() -> None:
    seen: set[tuple[str, int]] = set()
    for member in ScriptCode:
        assert member.scripts and set(member.scripts) <= set(SCRIPT_NAMES), member
        for script in member.scripts:
            assert (script, int(member)) not in seen, (script, member)
            seen.add((script, int(member)))
    raised = [m for m in ScriptCode if m.raised]
    assert raised == [ScriptCode.INVALID_INPUT]
    assert all(m.exception is not None for m in raised)


async def test_every_facade_call_goes_through_the_one_call_path(
    offline_scripts: Scripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lingua_shared.scripts.facade as facade

    calls: list[tuple[str, Any, dict[str, Any]]] = []

    async def recording_run(module: Any, target: Any, /, *, keys: Keys, **kw: Any) -> str:
        calls.append((module.NAME, target, kw))
        return "result"

    monkeypatch.setattr(facade, "run", recording_run)
    offline_scripts.redis = "client"  # type: ignore[assignment]
    offline_scripts.pipeline = None
    for name in SCRIPT_NAMES:
        kw = {
            p: SAMPLES[p] for p in inspect.signature(MODULES[name].args).parameters if p != "keys"
        }
        assert await getattr(offline_scripts, name)(**kw) == "result"
    assert [(n, t) for n, t, _ in calls] == [(n, "client") for n in SCRIPT_NAMES]


# --- keys built from a declared prefix ----------------------------------------------------------
def sample_keys(keys: Keys) -> list[str]:
    """One key of every layout in lingua_shared.keys (ids: sample values)."""
    shard = "en_ja_zh:eu-west:a100:0"
    return [
        keys.node("node-7"),
        keys.node_pools("node-7"),
        keys.node_retired("node-7"),
        keys.node_jobs("node-7"),
        keys.nodes_all,
        keys.nodes_expiry,
        keys.nodes_connected,
        keys.pool(shard),
        keys.pool_group("en_ja_zh", "eu-west", "a100"),
        keys.pools_index,
        keys.pair("zh", "en"),
        keys.pair_best("zh", "en"),
        keys.bands,
        keys.session("s-1"),
        keys.session_results("s-1"),
        keys.session_sent("s-1"),
        keys.session_waiting("s-1"),
        keys.session_outbox("s-1"),
        keys.outbox,
        keys.gateway("gw-1"),
        keys.heartbeats_applied("gw-1"),
        keys.heartbeats_covered,
        keys.sessions_active,
        keys.job("j-9"),
        keys.job_audio("j-9"),
        keys.idem("s-1:4"),
        keys.timers,
        keys.gaps,
        keys.exclusions,
        keys.unserved,
    ]


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_keys_are_built_only_from_a_declared_prefix(name: str) -> None:
    """``built from KEYS[i]`` names a KEYS entry that is the prefix, and a prefix is passed
    only to build keys from it."""
    h = parse_header(name)
    prefixes = {i for i, key_name, _ in h.keys if key_name == "prefix"}
    assert set(h.built) == prefixes
    for templates in h.built.values():
        assert templates and len(templates) == len(set(templates))


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_built_key_is_a_layout_of_the_key_schema(name: str) -> None:
    keys = Keys("test")
    samples = sample_keys(keys)
    for template in parse_header(name).templates:
        pattern = template_regex(keys.prefix, template)
        assert any(pattern.match(k) for k in samples), f"{name}: {template} is no key layout"
