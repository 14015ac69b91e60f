#!/usr/bin/env bash
# Sets up everything lrk needs on a fresh Debian 12 machine with Node.js 20 and root:
# the npm dependencies (which also builds lrkc into dist/), and, when no WebGPU adapter is found,
# Mesa's lavapipe Vulkan driver (version 25, from bookworm-backports) so WebGPU runs on the CPU.
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

# A WebGPU adapter: a real GPU's driver, or lavapipe. Mesa wants a runtime dir; give it one.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/lrk-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
if node bin/lrkc.js devices >/dev/null 2>&1; then
  exit 0
fi
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$codename" = bookworm ]; then
  echo "setup: no WebGPU adapter found; installing Mesa's lavapipe (mesa-vulkan-drivers 25) from bookworm-backports"
  echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/lrk-bookworm-backports.list
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null
  if node bin/lrkc.js devices >/dev/null 2>&1; then
    echo "setup: WebGPU now runs on lavapipe"
    exit 0
  fi
fi
echo "setup: warning: no WebGPU adapter; lrk will only train with --device cpu" >&2
node bin/lrkc.js devices || true
