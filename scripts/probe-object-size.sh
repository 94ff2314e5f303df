#!/usr/bin/env bash
# Sequential reads of 256 MiB from a loopback s3rver as blocks of each size in SIZES (MiB),
# through the S3 store with no mount, alternated round by round; prints the rate and the CPU
# seconds s3rver spent. Each size keeps IN_FLIGHT_MB MiB in flight (like the mount's
# read-ahead) unless THREADS is set. Rounds alternate the order (ABBA): on this virtual machine
# the first run after a pause touches memory the host has taken back, and ran slower.
# usage: SIZES="4 16" ROUNDS=4 scripts/probe-object-size.sh
# Needs root and what scripts/bench-s3.sh installs (s3rver).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --example s3_object_size >/dev/null
X="$CARGO_TARGET_DIR/release/examples/s3_object_size"
W=/var/tmp/graviton-probe-object-size
S3RVER=/var/cache/graviton/s3rver/node_modules/.bin/s3rver
[ -x "$S3RVER" ] || { echo "s3rver is missing: run scripts/bench-s3.sh once" >&2; exit 1; }
rm -rf "$W" && mkdir -p "$W/s3"
P=54381
"$S3RVER" -d "$W/s3" -a 127.0.0.1 -p "$P" -s --no-vhost-buckets --configure-bucket g \
  >"$W/s3rver.log" 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$P") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
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
