#!/usr/bin/env bash
# The full test suite: installs what it needs, builds once, runs every test.
# usage: scripts/test.sh [extra nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --no-fail-fast "$@"
else
  cargo test --release --locked --no-fail-fast "$@"
fi
