#!/usr/bin/env bash
# Installs what tests/e2e needs beyond the Python [test] extra, on a Debian machine as root:
# Debian's Chromium (driven by Playwright; no browser download), Node.js if absent, and the
# pinned Segment client libraries in tests/e2e/js. Idempotent: a second run does nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
js="$root/tests/e2e/js"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-e2e: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

cd "$js"
stamp=node_modules/.headwater-e2e-lock
if [ -f package-lock.json ]; then
    if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp"; then
        echo "install-e2e: tests/e2e/js/node_modules is up to date"
    else
        npm ci --no-audit --no-fund
        cp package-lock.json "$stamp"
    fi
else
    npm install --no-audit --no-fund
fi
