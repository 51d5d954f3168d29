"""The quick-bench fixture stops every process a run started, not only the bench's group."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from lingua_bench._base_common import stop_tree

# a parent that starts a child in a session of its own (as the bench starts each service),
# prints the child's PID and then hangs
PARENT = """
import subprocess, sys, time
c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(c.pid, flush=True)
time.sleep(600)
"""


def test_stop_tree_stops_children_in_sessions_of_their_own() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    child = int(parent.stdout.readline())  # type: ignore[union-attr]
    assert psutil.pid_exists(child)
    t0 = time.monotonic()
    stop_tree(parent.pid)
    parent.wait(5)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - t0 < 10  # SIGTERM was enough: nothing waited for the SIGKILL
    parent.stdout.close()  # type: ignore[union-attr]
