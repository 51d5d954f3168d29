#!/usr/bin/env bash
# Install what the project needs: uv (if missing) and the workspace into .venv (from uv.lock).
set -eu
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  if [ -x "$HOME/.local/bin/uv" ]; then
    export PATH="$HOME/.local/bin:$PATH"
  else
    echo "bootstrap: installing uv with pip"
    python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
    export PATH="$HOME/.local/bin:$PATH"
  fi
fi
command -v uv >/dev/null 2>&1 || { echo "bootstrap: uv not found after install; install it: pip install uv" >&2; exit 1; }
uv sync --all-packages --frozen --quiet
echo "bootstrap: .venv ready ($(.venv/bin/python --version))"
