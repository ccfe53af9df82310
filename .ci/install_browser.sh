#!/usr/bin/env bash
# Debian's Chromium for tests/test_playground_browser.py (driven by Playwright with
# executable_path=/usr/bin/chromium; `playwright install` would download its own browsers instead).
# Idempotent: does nothing when Chromium is already installed. Needs root (or sudo) for apt-get.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: /usr/bin/chromium is missing and apt-get is not available; install Chromium by hand" >&2
    exit 2
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Quiet on success; the whole apt output on failure.
if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: installing Debian's chromium package failed (see the apt output above)" >&2
    exit 2
fi
if [ ! -x /usr/bin/chromium ]; then
    echo "error: apt-get installed the chromium package, but /usr/bin/chromium is still missing" >&2
    exit 2
fi
