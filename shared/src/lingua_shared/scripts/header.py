"""A Lua script's header, parsed: the contract its module and its body are checked against.

The header is the comment block that opens ``lua/<name>.lua``, up to its ``--@include``::

    -- <name>: what it does (the purpose line)
    -- KEYS[i] <name>           <description>; a full key is named lingua:v1:{cell}:<layout>
    --   built from KEYS[i]: <template>, <template>, ...     (KEYS[i] is the cell's prefix)
    --     <template>, ...                                   (a line ending in "," goes on)
    -- ARGV[i] <name>           <description>
    -- Returns: {code, ...} <meaning>; ...

A *template* is a key layout under the prefix, with ``<placeholders>`` for ids:
``node:<id>:pools``, ``pool:<shard>``, ``timers``. Every key a script touches is either one
of its KEYS or a template built from a KEYS entry that is the prefix (so it is in the same
cell, the same Redis Cluster slot). ``shared/tests/test_script_contract.py`` checks headers
against the modules; ``shared/tests/test_script_keys.py`` against the keys scripts really
touch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lingua_shared.scripts.loader import INCLUDE_RE

INDEXED_RE = re.compile(r"^(KEYS|ARGV)\[(\d+)\]\s+(\S+)\s*(.*)$")
BUILT_RE = re.compile(r"^built from KEYS\[(\d+)\]:\s*(.*)$")
CODE_RE = re.compile(r"\{\s*(-?\d+)\s*,")
PLACEHOLDER_RE = re.compile(r"<([a-z_]+)>")
# what an id may hold in a key; any other placeholder is one segment (no ':')
PLACEHOLDERS = {
    "shard": r"[^:{}]+:[^:{}]+:[^:{}]+:\d+",  # <langset>:<region>:<gpu>:<n>
    "group": r"[^:{}]+:[^:{}]+:[^:{}]+",  # <langset>:<region>:<gpu>
    "request_key": r"[^{}]+",  # a client's request id, or <session_id>:<index>
}
SEGMENT = r"[^:{}]+"


@dataclass
class Header:
    name: str
    purpose: str
    keys: list[tuple[int, str, str]] = field(default_factory=list)  # (i, name, description)
    built: dict[int, list[str]] = field(default_factory=dict)  # KEYS index -> templates
    argv: list[tuple[int, str, str]] = field(default_factory=list)
    returns: str = ""

    @property
    def codes(self) -> set[int]:
        return {int(c) for c in CODE_RE.findall(self.returns)}

    @property
    def templates(self) -> list[str]:
        return [t for ts in self.built.values() for t in ts]


def parse_header(lua_dir: Path, name: str) -> Header:
    lines = (lua_dir / f"{name}.lua").read_text().splitlines()
    comment: list[str] = []
    for line in lines:
        if not line.startswith("--") or INCLUDE_RE.match(line):
            break
        comment.append(line[2:].strip())
    if not comment:
        raise ValueError(f"{name}.lua has no header")
    header = Header(name=name, purpose=comment[0])
    in_returns = False
    building: int | None = None  # the KEYS index a "built from" list continues for
    for text in comment[1:]:
        if text.startswith("Returns:"):
            in_returns = True
        if in_returns:
            header.returns += text + "\n"
            continue
        if building is not None:
            header.built[building] += _templates(text)
            building = building if text.endswith(",") else None
            continue
        m = BUILT_RE.match(text)
        if m:
            i = int(m.group(1))
            header.built.setdefault(i, []).extend(_templates(m.group(2)))
            building = i if m.group(2).endswith(",") else None
            continue
        m = INDEXED_RE.match(text)
        if m:
            target = header.keys if m.group(1) == "KEYS" else header.argv
            target.append((int(m.group(2)), m.group(3), m.group(4)))
    return header


def _templates(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def template_regex(prefix: str, template: str) -> re.Pattern[str]:
    """The keys ``template`` stands for under ``prefix`` (one whole key)."""
    out, pos = [], 0
    for m in PLACEHOLDER_RE.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?:{PLACEHOLDERS.get(m.group(1), SEGMENT)})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile(re.escape(prefix) + "".join(out) + r"\Z")
