"""Language codes: the one rule every layer applies (docs/protocol.md §2.3).

A code is BCP-47-like and stored lowercase: a primary subtag of 2-3 ASCII letters, then any
number of subtags of 2-8 ASCII letters or digits, joined by ``-``, at most 35 characters
(``en``, ``yue``, ``pt-br``, ``zh-hant``, ``sr-latn``, ``es-419``, ``zh-hant-tw``). What a
peer sends is normalised first: surrounding blanks dropped, lowercased, ``_`` read as ``-``
(``PT_br`` -> ``pt-br``, ``zh-Hant`` -> ``zh-hant``); only ASCII input is read, so no
Unicode case mapping can turn a foreign character into a letter. The Lua side
(``is_lang`` in ``lua/lib/common.lua``) checks the same rule on stored codes, and
``shared/tests/test_lang_rule.py`` checks both agree. A code never holds ``_`` (the language
set separator) nor ``:`` ``{`` ``}`` (key separators and the cell's hash tag), so it is safe
in every key that names it.
"""

from __future__ import annotations

import re
from typing import Any

MAX_LANG_LEN = 35
MAX_LANGS_PER_SET = 8
LANG_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")


def is_lang(code: Any) -> bool:
    """``code`` is a language code as stored (already normalised)."""
    return isinstance(code, str) and len(code) <= MAX_LANG_LEN and bool(LANG_RE.fullmatch(code))


def norm_lang(value: Any) -> str | None:
    """``value`` as the rule stores it, or None when no spelling of it is a code."""
    if not isinstance(value, str) or not value.isascii():
        return None
    code = value.strip().lower().replace("_", "-")
    return code if is_lang(code) else None
