#!/usr/bin/env bash
# Sequential reads of Graviton (PostgreSQL + S3) and s3fs from ONE loopback s3rver, alternated
# round by round, each after a remount with the kernel's caches dropped. Prints the rate and the
# CPU seconds s3rver and the mount daemon spent on each read. s3rver's CPU use varies a lot from
# run to run (most of it is V8 garbage collection), so only alternated reads on one server compare.
# usage: ROUNDS=4 bench/probe-seqr-vs-s3fs.sh
#   PERF=1 records each read's system-wide profile in $W/perf-<column>-<round>.data.
#   A second Graviton column, mounted in turn on the same volume: B_BIN=/path/to/graviton (another
#   build) and/or B_OPTS=readahead_mb=16 (other mount options). PROBE_BIN picks the first build.
# Needs root and what bench/bench-s3.sh installs (s3rver, s3fs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --bin graviton >/dev/null
source scripts/pg.sh >/dev/null
A="${PROBE_BIN:-$GRAVITON_BIN}"
source scripts/s3rver.sh
W=/var/tmp/graviton-probe-seqr
for m in a b f; do fusermount3 -uz "$W/$m" 2>/dev/null || true; done
rm -rf "$W" && mkdir -p "$W"/{a,b,f,state}
export XDG_STATE_HOME="$W/state"
P=54371
start_s3rver "$W" "$P" g f
DB="graviton_probe_seqr_$$"
cleanup() {
  set +e
  for m in a b f; do fusermount3 -uz "$W/$m" 2>/dev/null; done
  sleep 1
  pkill -f "graviton mount.* $W/"
  kill "$SP"
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB"
}
trap cleanup EXIT
runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
VOL="${GRAVITON_TEST_PG%/*}/$DB"
"$A" format --store "s3://g?endpoint=http://127.0.0.1:$P&region=us-east-1" "$VOL" >/dev/null
echo "S3RVER:S3RVER" > "$W/passwd" && chmod 600 "$W/passwd"

mount_a() { "$A" mount "$VOL" "$W/a" -o allow_other; }
mount_b() { "${B_BIN:-$A}" mount "$VOL" "$W/b" -o "allow_other${B_OPTS:+,$B_OPTS}"; }
mount_f() {
  s3fs f "$W/f" -o "url=http://127.0.0.1:$P,use_path_request_style,passwd_file=$W/passwd"
  for _ in $(seq 50); do mountpoint -q "$W/f" && break; sleep 0.1; done
}
daemon() {
  case $1 in
    f) pgrep -nx s3fs ;;
    *) pgrep -f "graviton mount.* $W/$1\$" | head -1 ;;
  esac
}
unmount() { # and wait for the daemon to finish
  local p
  p=$(daemon "$1")
  fusermount3 -u "$W/$1"
  timeout 150 tail --pid="$p" -f /dev/null || true
}
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

COLUMNS_="a f"
[ -z "${B_BIN:-}${B_OPTS:-}" ] || COLUMNS_="a b f"
mount_a
mount_f
dd if=/dev/urandom of="$W/big" bs=1M count=256 status=none
cp "$W/big" "$W/a/big"
cp "$W/big" "$W/f/big"
sync
GRAVITON=a  # which Graviton column is mounted (one volume: one mount at a time)
for r in $(seq "${ROUNDS:-3}"); do
  for t in $COLUMNS_; do
    if [ "$t" = f ]; then unmount f; else unmount "$GRAVITON"; GRAVITON=$t; fi
    sync; echo 3 > /proc/sys/vm/drop_caches
    "mount_$t"
    sleep 1
    d=$(daemon "$t") s0=$(cpu "$SP") d0=$(cpu "$d") t0=$(date +%s.%N)
    if [ -n "${PERF:-}" ]; then
      perf record -q -a -g -o "$W/perf-$t-$r.data" 2>/dev/null &
      PERF_PID=$!
      sleep 0.5
    fi
    cat "$W/$t/big" > /dev/null
    t1=$(date +%s.%N)
    if [ -n "${PERF:-}" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
    name=$(case $t in a) echo "graviton" ;; b) echo "graviton B" ;; f) echo "s3fs" ;; esac)
    python3 -c "print('round $r %-10s %4.0f MiB/s; CPU seconds: s3rver %.2f, daemon %.2f' % ('$name', 256 / ($t1 - $t0), $(cpu "$SP") - $s0, $(cpu "$d") - $d0))"
  done
done
