"""Hypothesis strategies for language codes, language sets and pool shard ids.

The rule is docs/protocol.md §2.3 (``lingua_shared.protocol.langs``): a primary subtag of 2-3
letters, then any number of subtags of 2-8 letters or digits, joined by ``-``, at most 35
characters, lowercase. What a node or client *sends* may differ in case and use ``_``
(``zh_Hant``, ``PT-BR``); it is normalised to the rule. Strategies here draw:

- ``VALID_LANG``: codes that follow the rule (with the well-known shapes ``yue``, ``pt-br``,
  ``zh-hant``, ``sr-latn``, ``es-419`` mixed in);
- ``as_sent(code)``: one way a peer may spell a valid code (case, ``_``, surrounding blanks);
- ``NEAR_MISS_LANG``: strings one step outside the rule (a 1- or 4-letter primary, a subtag of
  1 or 9 characters, an empty subtag, a digit primary, a forbidden or non-ASCII character,
  too long), none of which any spelling turns into a valid code;
- ``ANY_TEXT``: arbitrary short text (mostly invalid);
- ``VALID_SHARD_ID`` / ``SHARD_ID_CANDIDATE``: shard ids as the scripts build them, and
  strings that may or may not be one.
"""

from __future__ import annotations

from hypothesis import strategies as st

MAX_LANG = 35
WELL_KNOWN = ("yue", "pt-br", "zh-hant", "sr-latn", "es-419", "zh-hant-tw", "en", "de-1996")

PRIMARY = st.from_regex(r"[a-z]{2,3}", fullmatch=True)
SUBTAG = st.from_regex(r"[a-z0-9]{2,8}", fullmatch=True)

VALID_LANG = st.one_of(
    st.sampled_from(WELL_KNOWN),
    st.builds(
        lambda primary, subtags: "-".join([primary, *subtags]),
        PRIMARY,
        st.lists(SUBTAG, max_size=4),
    ).filter(lambda code: len(code) <= MAX_LANG),
)


@st.composite
def as_sent(draw: st.DrawFn, code: str) -> str:
    """``code`` as a peer may send it: any case, ``_`` or ``-`` between subtags, blanks."""
    chars = [c.upper() if c.isalpha() and draw(st.booleans()) else c for c in code]
    sep = draw(st.sampled_from("-_"))
    text = "".join(sep if c == "-" else c for c in chars)
    pad = draw(st.sampled_from(("", " ", "\t")))
    return f"{pad}{text}{pad}"


SENT_LANG = VALID_LANG.flatmap(as_sent)

# one step outside the rule; no spelling (case, '_') of these is a valid code
NEAR_MISS_LANG = st.one_of(
    st.sampled_from(
        (
            "",
            "e",
            "engl",
            "e1",
            "1en",
            "en-",
            "-en",
            "en--us",
            "en-a",
            "en-abcdefghi",
            "en:us",
            "en{us}",
            "en us",
            "en.us",
            "en/us",
            "zh-hänt",
            "\uff45\uff4e",  # FULLWIDTH e n
            "\u212aa",  # KELVIN SIGN: lowercases to ASCII 'k', still not ASCII
            "en\x00",
            "pt-br-" + "abcdefgh-" * 3 + "abcd",  # 36 characters
        )
    ),
    st.from_regex(r"[a-z]|[a-z]{4,6}", fullmatch=True),
    st.builds(
        lambda p, s: f"{p}-{s}",
        PRIMARY,
        st.from_regex(r"[a-z0-9]|[a-z0-9]{9,12}", fullmatch=True),
    ),
    st.builds(lambda c, bad: c + bad, VALID_LANG, st.sampled_from(":{}$*?.,;/\\ü\u00e9'\"")),
    st.builds(
        lambda p, subs: "-".join([p, *subs]),
        PRIMARY,
        st.lists(st.from_regex(r"[a-z0-9]{8}", fullmatch=True), min_size=4, max_size=6),
    ),  # well-formed subtags, more than 35 characters in all
)

ANY_TEXT = st.text(max_size=40)

LABEL = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,63}", fullmatch=True)


def langset_of(langs: list[str]) -> str:
    return "_".join(sorted(set(langs)))


LANGSET = st.lists(VALID_LANG, min_size=2, max_size=8, unique=True).map(langset_of)

VALID_SHARD_ID = st.builds(
    lambda ls, region, gpu, n: f"{ls}:{region}:{gpu}:{n}",
    LANGSET,
    LABEL,
    LABEL,
    st.integers(0, 999_999_999),
)

# a valid shard id with one part replaced, cut or extended: valid or not, both sides must agree
SHARD_ID_CANDIDATE = st.one_of(
    VALID_SHARD_ID,
    st.builds(
        lambda parts, i, junk: ":".join([*parts[:i], junk, *parts[i + 1 :]]),
        VALID_SHARD_ID.map(lambda s: s.split(":")),
        st.integers(0, 3),
        st.one_of(NEAR_MISS_LANG, ANY_TEXT, st.sampled_from(("en_en", "zh_en", "en", "01", "-1"))),
    ),
    VALID_SHARD_ID.map(lambda s: s.rsplit(":", 1)[0]),
    VALID_SHARD_ID.map(lambda s: s + ":0"),
    ANY_TEXT,
)
