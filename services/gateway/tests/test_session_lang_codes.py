"""A session's language codes follow the rule nodes declare theirs by (docs/protocol.md §2.3,
``lingua_shared.protocol.langs``): every spelling of a valid code is normalised to it, and any
other value is INVALID_MESSAGE naming the field."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from lingua_gateway.session_spec import lang_code, spec_from_init
from lingua_shared.errors import InvalidMessage
from lingua_shared.protocol import ErrorCode
from lingua_shared.protocol.langs import norm_lang
from lingua_shared.protocol.session import SessionInit
from tests.support.lang_codes import ANY_TEXT, NEAR_MISS_LANG, VALID_LANG, as_sent


@settings(max_examples=200, deadline=None)
@given(code=VALID_LANG, other=VALID_LANG, data=st.data())
def test_every_spelling_of_a_code_is_accepted_as_it(code: str, other: str, data: st.DataObject):
    sent = data.draw(as_sent(code))
    assert lang_code(sent, "src_lang") == code
    if other != code:
        spec = spec_from_init(SessionInit(src_lang=sent, tgt_lang=other))
        assert (spec.src_lang, spec.tgt_lang) == (code, other)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(NEAR_MISS_LANG, ANY_TEXT))
@example(value="\u212aa")
def test_any_other_value_is_invalid_message(value: str) -> None:
    code = norm_lang(value)
    try:
        got: str | None = lang_code(value, "tgt_lang")
    except InvalidMessage as exc:
        assert exc.code == ErrorCode.INVALID_MESSAGE and exc.details == {"field": "tgt_lang"}
        got = None
    assert got == code
