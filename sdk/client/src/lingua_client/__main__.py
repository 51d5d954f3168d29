"""``python -m lingua_client`` and the ``lingua-client`` console script."""

from __future__ import annotations

from lingua_client.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
