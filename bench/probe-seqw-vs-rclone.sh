#!/usr/bin/env bash
# Sequential writes (fio, 256 MiB, 1 MiB writes, final fsync) into a Graviton write-back mount
# (PostgreSQL + S3) and into `rclone mount --vfs-cache-mode writes`, both mounted on ONE loopback
# s3rver, alternated in ABBA order, with each daemon's CPU seconds per write.
# usage: ROUNDS=4 bench/probe-seqw-vs-rclone.sh     (PROBE_BIN=/path picks another build)
# Needs root and what bench/bench-s3.sh installs (s3rver, rclone).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --bin graviton >/dev/null
source scripts/pg.sh >/dev/null
G="${PROBE_BIN:-$GRAVITON_BIN}"
source scripts/s3rver.sh
W=/var/tmp/graviton-probe-seqw
for m in g r; do fusermount3 -uz "$W/$m" 2>/dev/null || true; done
rm -rf "$W" && mkdir -p "$W"/{g,r,state}
export XDG_STATE_HOME="$W/state"
P=54391
start_s3rver "$W" "$P" g r
DB="graviton_probe_seqw_$$"
cleanup() {
  # each daemon may still upload: wait for it (up to 150 s) before stopping the server
  set +e
  local pids
  pids=$(pgrep -f "graviton mount.* $W/|rclone mount :s3:r")
  for m in g r; do fusermount3 -u "$W/$m" 2>/dev/null || fusermount3 -uz "$W/$m" 2>/dev/null; done
  for p in $pids; do timeout 150 tail --pid="$p" -f /dev/null; done
  kill "$SP"
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB"
}
trap cleanup EXIT
runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
VOL="${GRAVITON_TEST_PG%/*}/$DB"
"$G" format --store "s3://g?endpoint=http://127.0.0.1:$P&region=us-east-1" "$VOL" >/dev/null
"$G" mount "$VOL" "$W/g" -o allow_other,writeback
# rclone's S3 client refuses a custom CA bundle with its own transport
env -u AWS_CA_BUNDLE rclone mount ":s3:r" "$W/r" --daemon --allow-other --s3-provider Other \
  --s3-endpoint "http://127.0.0.1:$P" --s3-region us-east-1 --s3-access-key-id S3RVER \
  --s3-secret-access-key S3RVER --vfs-cache-mode writes --cache-dir "$W/rclone-cache" 2>/dev/null
for _ in $(seq 50); do mountpoint -q "$W/r" && break; sleep 0.2; done
gpid=$(pgrep -f "graviton mount.* $W/g" | head -1)
rpid=$(pgrep -f "rclone mount :s3:r" | head -1)
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
order="g r"
for i in $(seq "${ROUNDS:-4}"); do
  for t in $order; do
    if [ "$t" = g ]; then pid=$gpid name=graviton-wb; else pid=$rpid name=rclone; fi
    sleep 3
    c0=$(cpu "$pid")
    bw=$(fio --name=s --filename="$W/$t/seq$i.dat" --rw=write --bs=1M --size=256M \
        --ioengine=psync --end_fsync=1 --output-format=json 2>/dev/null |
      python3 -c 'import json,sys; print("%.0f" % (json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1048576))')
    echo "round $i $name: $bw MiB/s, daemon CPU $(python3 -c "print('%.2f' % ($(cpu "$pid") - $c0))") s"
  done
  order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
done
