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

# Property tests judge what the code does, never how fast: hypothesis's default 200 ms
# deadline per example is a timing assertion, and on this shared machine a cold first
# example (a model's validator built on first use) can pass it under load.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
else:
    _hypothesis_settings.register_profile("lingua", deadline=None)
    _hypothesis_settings.load_profile("lingua")
