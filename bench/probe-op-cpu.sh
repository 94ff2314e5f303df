#!/usr/bin/env bash
# Daemon CPU per request: N empty files created, then unlinked by one Python loop, on a fresh
# embedded volume and on the FUSE ceiling (examples/null_fuse.rs); prints each one's unlink rate
# and its daemon's CPU time per unlink (all threads, from /proc). Runs as root from anywhere.
# usage: bench/probe-op-cpu.sh GRAVITON_BINARY [N]
set -euo pipefail
BIN=$(realpath "$1") N=${2:-20000}
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --example null_fuse >/dev/null
NULL_FUSE="$CARGO_TARGET_DIR/release/examples/null_fuse"
W=$(mktemp -d /var/tmp/graviton-probe.XXXX)
mkdir "$W/mnt" "$W/ceiling"
cleanup() {
  fusermount3 -u "$W/mnt" 2>/dev/null || true
  fusermount3 -u "$W/ceiling" 2>/dev/null || true
  sleep 1
  rm -rf "$W"
}
trap cleanup EXIT
"$NULL_FUSE" "$W/ceiling" >/dev/null 2>&1 &
CEILING_PID=$!
"$BIN" format "$W/vol" >/dev/null
"$BIN" mount "$W/vol" "$W/mnt" -o allow_other
for _ in $(seq 100); do mountpoint -q "$W/ceiling" && break; sleep 0.1; done
cpu_ticks() { awk '{s += $14 + $15} END {print s}' /proc/"$1"/task/*/stat; }
for target in ceiling mnt; do
  case $target in ceiling) PID=$CEILING_PID ;; mnt) PID=$(cat "$W/vol/graviton.pid") ;; esac
  python3 -c "
import os, sys
d = sys.argv[1]; os.makedirs(d)
for i in range($N): os.close(os.open(f'{d}/f{i}', os.O_CREAT | os.O_WRONLY, 0o644))
" "$W/$target/d"
  before=$(cpu_ticks "$PID")
  rate=$(python3 -c "
import os, sys, time
d = sys.argv[1]; t = time.perf_counter()
for i in range($N): os.unlink(f'{d}/f{i}')
print('%.0f' % ($N / (time.perf_counter() - t)))
" "$W/$target/d")
  after=$(cpu_ticks "$PID")
  hz=$(getconf CLK_TCK)
  name=$target; [ $target = mnt ] && name=graviton
  python3 -c "print('%-8s unlink %s files/s, daemon CPU %.1f us per unlink' % ('$name', $rate, ($after - $before) * 1e6 / $hz / $N))"
done
