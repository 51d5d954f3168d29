"""Root conftest: the shared real-Redis / real-RabbitMQ fixtures, and the fixtures and hooks
the integration, fault and hostile-input suites share (``tests/support``)."""

import sys
from pathlib import Path

# ``tests.support`` must import however pytest is started: ``python -m pytest`` puts the
# repository on sys.path, a bare ``pytest`` does not.
ROOT = str(Path(__file__).resolve().parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

pytest_plugins = ["lingua_shared.testing", "tests.support.fixtures"]
