"""``python -m lingua_node_agent`` and the ``lingua-node-agent`` console script."""

from __future__ import annotations

from lingua_node_agent.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
