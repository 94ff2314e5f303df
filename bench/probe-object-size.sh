#!/usr/bin/env bash
# Sequential reads of 256 MiB from a loopback s3rver as blocks of each size in SIZES (MiB),
# through the S3 store with no mount, alternated round by round; prints the rate and the CPU
# seconds s3rver spent. Each size keeps IN_FLIGHT_MB MiB in flight (like the mount's
# read-ahead) unless THREADS is set. Rounds alternate the order (ABBA): on this virtual machine
# the first run after a pause touches memory the host has taken back, and ran slower.
# usage: SIZES="4 16" ROUNDS=4 bench/probe-object-size.sh
# Needs root and what bench/bench-s3.sh installs (s3rver).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --example s3_object_size >/dev/null
X="$CARGO_TARGET_DIR/release/examples/s3_object_size"
source scripts/s3rver.sh
W=/var/tmp/graviton-probe-object-size
rm -rf "$W"
P=54381
trap 'kill ${SP:-} 2>/dev/null || true' EXIT
start_s3rver "$W" "$P" g
U="s3://g?endpoint=http://127.0.0.1:$P&region=us-east-1"
SIZES="${SIZES:-4 16}"
for mb in $SIZES; do MB=$mb "$X" "$U" put 1; done
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
order="$SIZES"
for r in $(seq "${ROUNDS:-4}"); do
  for mb in $order; do
    t=${THREADS:-$(( ${IN_FLIGHT_MB:-32} / mb ))}
    (( t >= 1 )) || t=1
    sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1
    s0=$(cpu "$SP")
    rate=$(MB=$mb "$X" "$U" get "$t")
    python3 -c "print('round $r: %3d MiB blocks, %d at once: %s, s3rver %.2f CPU seconds' % ($mb, $t, '$rate', $(cpu "$SP") - $s0))"
  done
  order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
done
