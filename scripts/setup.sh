#!/usr/bin/env bash
# Sets up everything lrk needs on a fresh Debian 12 machine with Node.js 20 and root:
# the npm dependencies (which also builds lrkc into dist/).
set -euo pipefail
cd "$(dirname "$0")/.."

major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
  echo "lrk needs Node.js 20 or newer (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# npm ci when the lockfile changed since the last install (or on a fresh clone); the `prepare`
# script compiles the TypeScript sources. Otherwise just rebuild.
stamp=node_modules/.lrk-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  echo "setup: installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
else
  npm run --silent build
fi
