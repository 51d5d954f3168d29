"""One language code rule everywhere (docs/protocol.md §2.3): Python
(``lingua_shared.protocol.langs``, ``Keys.parse_shard_id``) and Lua (``is_lang``,
``is_shard_id``, the language-set sort in ``lua/lib/common.lua``) agree on generated inputs,
valid, one step off, and arbitrary; node registrations normalise by the same rule (sessions:
``services/gateway/tests/test_session_lang_codes.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis

from lingua_shared.keys import InvalidShardId, Keys, langset_id
from lingua_shared.protocol.capabilities import CapabilityError, _norm_lang
from lingua_shared.protocol.langs import is_lang, norm_lang
from lingua_shared.scripts import find_lua_dir
from lingua_shared.scripts.loader import INCLUDE_RE
from lingua_shared.testing import sync_redis_for_tests
from tests.support.lang_codes import (
    ANY_TEXT,
    NEAR_MISS_LANG,
    SENT_LANG,
    SHARD_ID_CANDIDATE,
    VALID_LANG,
    as_sent,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# the rule's Lua helpers on every ARGV: is_lang, is_shard_id, and the order parse_lang_sets
# sorts a set in (the sorted set of all ARGV, or false when it refuses them)
PROBE = """--@include common
local langs, shards = {}, {}
for i = 1, #ARGV do
  langs[i] = is_lang(ARGV[i]) and 1 or 0
  shards[i] = is_shard_id(ARGV[i]) and 1 or 0
end
local sets = parse_lang_sets(cjson.encode({ARGV}))
return {langs, shards, sets and cjson.encode(sets[1]) or false}
"""


@pytest.fixture(scope="module")
def lua(redis_url: str) -> Iterator[SyncRedis]:
    """A client and the probe's sha (it touches no key)."""
    client = sync_redis_for_tests(redis_url)
    lua_dir = find_lua_dir()
    source = INCLUDE_RE.sub(lambda m: (lua_dir / "lib" / f"{m.group(1)}.lua").read_text(), PROBE)
    client.sha = client.script_load(source)  # type: ignore[attr-defined]
    yield client
    client.close()


def probe(lua: SyncRedis, values: list[str]) -> tuple[list[bool], list[bool], list[str] | None]:
    langs, shards, order = lua.evalsha(lua.sha, 0, *values)  # type: ignore[attr-defined]
    return [x == 1 for x in langs], [x == 1 for x in shards], json.loads(order) if order else None


@PROPERTY
@given(values=st.lists(st.one_of(VALID_LANG, NEAR_MISS_LANG, SENT_LANG, ANY_TEXT), max_size=8))
@example(values=["yue", "pt-br", "zh-hant", "sr-latn", "es-419", "pt_br", "PT-BR", "en\n"])
def test_python_and_lua_agree_on_language_codes(lua: SyncRedis, values: list[str]) -> None:
    langs, _, _ = probe(lua, values)
    assert langs == [is_lang(v) for v in values]


@PROPERTY
@given(values=st.lists(SHARD_ID_CANDIDATE, min_size=1, max_size=4))
@example(values=["en_pt-br:eu:a100:0", "en_zh:eu:a100:01", "en_zh:eu:a100", "en:eu:a100:0"])
def test_python_and_lua_agree_on_shard_ids(lua: SyncRedis, values: list[str]) -> None:
    def parses(v: str) -> bool:
        try:
            Keys.parse_shard_id(v)
        except InvalidShardId:
            return False
        return True

    _, shards, _ = probe(lua, values)
    assert shards == [parses(v) for v in values]


@PROPERTY
@given(langs=st.lists(VALID_LANG, min_size=2, max_size=8, unique=True))
@example(langs=["ptb", "pt-br", "pt"])  # '-' sorts before letters bytewise, not in en_US
@example(langs=["es-419", "es-a1", "es"])
def test_lua_sorts_a_language_set_as_python_does(lua: SyncRedis, langs: list[str]) -> None:
    """The language set id Lua builds (heartbeat) is the one Python builds (langset_id)."""
    _, _, order = probe(lua, langs)
    assert order == sorted(langs)
    assert "_".join(order) == langset_id(langs)


@settings(max_examples=300, deadline=None)
@given(code=VALID_LANG, data=st.data())
def test_every_spelling_of_a_code_normalises_to_it_everywhere(code: str, data: st.DataObject):
    sent = data.draw(as_sent(code))
    assert is_lang(code)
    assert norm_lang(sent) == _norm_lang(sent) == code


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(NEAR_MISS_LANG, ANY_TEXT))
@example(value="\u212aa")  # KELVIN SIGN: 'ka' once lowercased, never ASCII
@example(value="en\x00")
def test_a_value_is_refused_or_accepted_alike_everywhere(value: str) -> None:
    code = norm_lang(value)
    try:
        derived: str | None = _norm_lang(value)
    except CapabilityError:
        derived = None
    assert derived == code
    assert code is None or is_lang(code)
