"""The atheris harnesses in ``fuzz/`` run, for a bounded time, and find nothing.

A short run in CI keeps the harnesses working (imports, entry points, the properties they
check); longer campaigns are run by hand (fuzz/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = ["fuzz_session_frames.py", "fuzz_json_decode.py"]


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_runs_clean_for_a_bounded_time(harness: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ_DIR / harness),
            "-runs=20000",
            "-max_total_time=5",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "Done " in proc.stderr, tail  # libFuzzer's summary: the loop really ran
    assert not list(tmp_path.glob("crash-*")), tail
