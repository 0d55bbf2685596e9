#!/usr/bin/env bash
# Dashboard browser tests: headless Chromium (Selenium) against `celeriac dashboard`
# (and the interop example's worker and beat, which run real tasks)
# on a fresh SQLite file. Installs Debian's chromium + chromium-driver when missing
# and allowed (root with apt-get); otherwise the tests skip with the reason, or fail
# with CELERIAC_REQUIRE_SERVICES=1.
#
#   bash scripts/browser.sh            # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf -- '--> %s\n' "$*"; }

if ! command -v chromedriver >/dev/null || ! { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing chromium and chromium-driver (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    say "Chromium is missing and cannot be installed here; the browser tests will skip"
  fi
fi

say "building celeriac (release)"
cargo build --release --bin celeriac --example interop

bash scripts/python-env.sh >/dev/null

say "browser tests"
cd tests/browser
exec ../../.venv/bin/python -m pytest -q "$@"
