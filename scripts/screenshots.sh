#!/usr/bin/env bash
# Regenerates the dashboard screenshots in docs/screenshots (linked from the README)
# by running the browser tests with CELERIAC_SCREENSHOTS set.
set -euo pipefail
cd "$(dirname "$0")/.."
CELERIAC_SCREENSHOTS="$PWD/docs/screenshots" bash scripts/browser.sh "$@"
ls -1 docs/screenshots
