"""Services call scripts only through ``lingua_shared.scripts.call`` and read their outcomes
as ``ScriptCode`` members, never as bare integers (``2``, ``-4``) whose meaning depends on
the script."""

from __future__ import annotations

import ast
import re

from lingua_shared.scripts import find_lua_dir

ROOT = find_lua_dir().parent

SERVICE_SOURCES = sorted(
    p
    for root in (ROOT / "services", ROOT / "shared" / "src")
    for p in root.rglob("*.py")
    if "/src/" in p.as_posix() and "lingua_shared/scripts/" not in p.as_posix()
)
# a line another change is rewriting; the member it takes is ScriptCode.NO_SUCH_SESSION
BARE_CODE_ALLOWED: set[tuple[str, str]] = set()


def _int_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int


def test_services_compare_script_codes_with_the_enum_only() -> None:
    found = []
    for path in SERVICE_SOURCES:
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if not any(isinstance(s, ast.Attribute) and s.attr == "code" for s in sides):
                continue
            literals = [
                e for s in sides for e in (s.elts if isinstance(s, ast.Tuple | ast.Set) else [s])
            ]
            if any(_int_literal(e) for e in literals):
                text = ast.get_source_segment(source, node) or ""
                if (path.name, text) not in BARE_CODE_ALLOWED:
                    found.append(f"{path.name}:{node.lineno}: {text}")
    assert found == []


def test_services_send_no_script_by_hand() -> None:
    """No EVALSHA, registered script or raw ``scripts.script(...)`` call outside the script
    package: every call goes through ``lingua_shared.scripts.call``."""
    raw = re.compile(r"\.(evalsha|eval|register_script|script)\(")
    found = [
        f"{p.name}: {line.strip()}"
        for p in SERVICE_SOURCES
        for line in p.read_text().splitlines()
        if raw.search(line)
    ]
    assert found == []
