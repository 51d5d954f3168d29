"""Persistence of the node id that the scheduler assigned, across agent restarts.

A node that comes back with the same id inside its TTL grace keeps its pool membership
(requirement N6); one that forgets its id registers as a new node and leaves the old one to
expire. So the id is written to a small JSON file as soon as an ack carries it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class NodeIdStore:
    """Reads and writes ``{"node_id": "..."}`` in one file, atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> str | None:
        """The stored id, or ``None`` when the file is absent, empty or unreadable.

        A corrupt file is treated as absent rather than fatal: the worst outcome is one extra
        registration under a fresh id, which the old id's TTL cleans up.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        node_id = data.get("node_id") if isinstance(data, dict) else None
        return node_id if isinstance(node_id, str) and node_id else None

    def save(self, node_id: str) -> None:
        """Write the id via a temporary file and a rename, so a crash never leaves half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".node-id.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"node_id": node_id}, fh)
                fh.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
