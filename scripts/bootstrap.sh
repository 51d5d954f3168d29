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
# The dashboard's browser test (tests/integration/test_dashboard.py) drives Debian's Chromium
# through Playwright; `playwright install` (a download) is never used.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing chromium with apt-get (for the dashboard browser test)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "bootstrap: apt-get install chromium failed; the dashboard browser test will fail" >&2
  else
    echo "bootstrap: /usr/bin/chromium is missing; the dashboard browser test needs it:" >&2
    echo "  sudo apt-get install -y chromium" >&2
  fi
fi
echo "bootstrap: .venv ready ($(.venv/bin/python --version))"
