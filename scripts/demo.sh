#!/usr/bin/env bash
# The main job on the built-in example: set-up (idempotent), build, then capture
# the bundled example app against the bundled fake provider and replay it
# offline. Needs root (eBPF, network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo xtask demo
