#!/usr/bin/env bash
# The whole test suite: set-up (idempotent), then formatting, clippy, unit tests
# and, as root, the privileged eBPF tests. Run with sudo to include them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo xtask test
