"""Where a generator's JSON report goes: a file, or stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """``report`` as JSON into ``out`` (its folder made), or to stdout without one."""
    text = json.dumps(report, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    else:
        print(text)
