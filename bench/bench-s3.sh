#!/usr/bin/env bash
# Graviton (PostgreSQL metadata + S3 blocks) against s3fs and `rclone mount --vfs-cache-mode
# writes`, all on the same loopback S3-compatible server, side by side in one run; prints a
# Markdown table. Needs root (apt, npm, mounts, drop_caches).
#
# The server is s3rver (npm, pinned below), not the tests' s3s-fs: s3s-fs mirrors keys onto a
# file tree, so it cannot hold both `d` and `d/`, and s3fs's mkdir (a `d/` marker, then HEAD `d`)
# gets a 500 from it and hangs in retries.
# usage: bench/bench-s3.sh [WORKDIR]    sizes: SEQ_MB=256 RAND_MB=64 FILES=2000
#        TOOLS="local graviton" bench/bench-s3.sh    (a subset of the columns)
#        ROUNDS=3 bench/bench-s3.sh    (every column three times in turn: medians and ranges)
# Columns: local dir, graviton (default: close and fsync wait for S3), graviton-wb (`-o
# writeback`: they wait for the local disk, as rclone's), s3fs, rclone, and `plain`: a plain
# S3 client (examples/s3_ceiling.rs: the AWS SDK, 8 MiB objects, 8 requests at a time, no
# FUSE, no hashing) moving as many bytes to and from the same server, the ceiling of the
# sequential rows. Every
# unmount waits for its daemon to exit (uploads of write-back data included) before the next
# step.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq s3fs rclone >/dev/null
command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
source scripts/env.sh
cargo build --release --locked --bin graviton >/dev/null
cargo build --release --locked --example s3_ceiling >/dev/null
source scripts/pg.sh
WORK="${1:-/var/tmp/graviton-bench-s3}"
SEQ_MB="${SEQ_MB:-256}" RAND_MB="${RAND_MB:-64}" FILES="${FILES:-2000}"
G="$GRAVITON_BIN"
export XDG_STATE_HOME="$WORK/state"

S3RVER_VERSION=3.7.1
S3RVER_HOME=/var/cache/graviton/s3rver
if [ ! -x "$S3RVER_HOME/node_modules/.bin/s3rver" ]; then
  mkdir -p "$S3RVER_HOME"
  (cd "$S3RVER_HOME" && npm install --no-audit --no-fund --silent "s3rver@$S3RVER_VERSION")
fi
S3_PORT=54331
ENDPOINT="http://127.0.0.1:$S3_PORT"
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1

unmount_all() {
  for t in graviton graviton-wb s3fs rclone; do fusermount3 -uz "$WORK/$t" 2>/dev/null || true; done
  sleep 1
  [ -z "${S3RVER_PID:-}" ] || kill "$S3RVER_PID" 2>/dev/null || true
}
trap unmount_all EXIT
unmount_all
rm -rf "$WORK" && mkdir -p "$WORK"/{graviton,graviton-wb,s3fs,rclone,local,s3}
"$S3RVER_HOME/node_modules/.bin/s3rver" -d "$WORK/s3" -a 127.0.0.1 -p "$S3_PORT" -s \
  --no-vhost-buckets --configure-bucket bench-graviton --configure-bucket bench-graviton-wb \
  --configure-bucket bench-s3fs \
  --configure-bucket bench-rclone --configure-bucket bench-plain >"$WORK/s3rver.log" 2>&1 &
S3RVER_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break; sleep 0.1; done

DB="graviton_bench_s3_$$"
runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
VOL="${GRAVITON_TEST_PG%/*}/$DB"
"$G" format --store "s3://bench-graviton?endpoint=$ENDPOINT&region=us-east-1" "$VOL" >/dev/null
runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE ${DB}_wb"
VOL_WB="${VOL}_wb"
"$G" format --store "s3://bench-graviton-wb?endpoint=$ENDPOINT&region=us-east-1" "$VOL_WB" >/dev/null

mount_target() {
  case $1 in
    graviton) "$G" mount "$VOL" "$WORK/graviton" -o "allow_other${GRAVITON_OPTS:+,$GRAVITON_OPTS}" ;;
    graviton-wb) "$G" mount "$VOL_WB" "$WORK/graviton-wb" -o "allow_other,writeback" ;;
    s3fs)
      echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" > "$WORK/passwd" && chmod 600 "$WORK/passwd"
      s3fs bench-s3fs "$WORK/s3fs" -o "url=$ENDPOINT,use_path_request_style,passwd_file=$WORK/passwd,allow_other" ;;
    rclone)
      # rclone's S3 client refuses a custom CA bundle with its own transport
      env -u AWS_CA_BUNDLE rclone mount ":s3:bench-rclone" "$WORK/rclone" --daemon --allow-other \
        --s3-provider Other --s3-endpoint "$ENDPOINT" --s3-region us-east-1 \
        --s3-access-key-id "$AWS_ACCESS_KEY_ID" --s3-secret-access-key "$AWS_SECRET_ACCESS_KEY" \
        --vfs-cache-mode writes --cache-dir "$WORK/rclone-cache"
      for _ in $(seq 50); do mountpoint -q "$WORK/rclone" && break; sleep 0.2; done ;;
    local) ;;
  esac
}
daemon_pid() {
  case $1 in
    graviton|graviton-wb) pgrep -f "graviton mount.* $WORK/$1\$" | head -1 ;;
    s3fs) pgrep -x s3fs | head -1 ;;
    rclone) pgrep -f "rclone mount :s3:bench-rclone" | head -1 ;;
  esac
}
declare -A PEAK
note_peak() { # the mount daemon's peak resident memory so far, in MiB
  local pid kb
  pid=$(daemon_pid "$1") || return 0
  [ -n "$pid" ] || return 0
  kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  (( kb / 1024 > ${PEAK[$1]:-0} )) && PEAK[$1]=$((kb / 1024)) || true
}
unmount_target() {
  local pid
  note_peak "$1"
  pid=$(daemon_pid "$1")
  fusermount3 -u "$WORK/$1" 2>/dev/null || fusermount3 -uz "$WORK/$1"
  [ -z "$pid" ] || timeout 300 tail --pid="$pid" -f /dev/null || true
  sleep 1
}
remount() { # drop every cache between writing and reading
  [ "$1" = local ] || unmount_target "$1"
  sync; echo 3 > /proc/sys/vm/drop_caches
  mount_target "$1"
}
fio_bw() { # dir name rw bs size-MB [extra…] → MiB/s
  local dir=$1 name=$2 rw=$3 bs=$4 size=$5; shift 5
  timeout 300 fio --name="$name" --directory="$dir" --filename="$name.dat" --rw="$rw" --bs="$bs" \
      --size="${size}M" --ioengine=psync --output-format=json "$@" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("%.1f" % ((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1048576))' ||
    echo "failed"
}

TARBALL="$WORK/src.tar"
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/*librocksdb-sys-*/ 2>/dev/null | head -1)
tar cf "$TARBALL" -C "$SRC" .

declare -A R
settle() { # until two one-second samples in a row are 90% idle, for at most 30 s
  local _c u n s i w t0 i0 quiet=0
  sync
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc CHECKPOINT >/dev/null || true
  for _ in $(seq 30); do
    read -r _c u n s i w _ < /proc/stat; t0=$((u + n + s + i + w)) i0=$i
    sleep 1
    read -r _c u n s i w _ < /proc/stat
    if (( (i - i0) * 100 >= (u + n + s + i + w - t0) * 90 )); then
      quiet=$((quiet + 1)); (( quiet >= 2 )) && return 0
    else
      quiet=0
    fi
  done
}
add() { R[$1]="${R[$1]:+${R[$1]} }$2"; }  # one more sample of a measure
column() { # one pass of every measure on tool $1, in a folder of its own for round $2
  # fio's files in the mount's root (rclone lost a new folder's file over a remount)
  local t=$1 M="$WORK/$1" D="$WORK/$1/r$2" c s rd t0 t1
  settle
  if [ "$t" = plain ]; then # PUT, then GET with every cache dropped
    add plain.seqw "$("$CARGO_TARGET_DIR/release/examples/s3_ceiling" "$ENDPOINT" bench-plain "$SEQ_MB" 8 put)"
    sync; echo 3 > /proc/sys/vm/drop_caches
    add plain.seqr "$("$CARGO_TARGET_DIR/release/examples/s3_ceiling" "$ENDPOINT" bench-plain "$SEQ_MB" 8 get)"
    echo "plain S3 client, round $2: PUT ${R[plain.seqw]##* } GET ${R[plain.seqr]##* } MiB/s" >&2
    return 0
  fi
  mount_target "$t"
  add "$t.seqw" "$(fio_bw "$M" seq write 1M "$SEQ_MB" --end_fsync=1)"
  remount "$t"
  add "$t.seqr" "$(fio_bw "$M" seq read 1M "$SEQ_MB")"
  add "$t.randw" "$(fio_bw "$M" rand randwrite 4k "$RAND_MB" --end_fsync=1 --runtime=30)"
  remount "$t"
  add "$t.randr" "$(fio_bw "$M" rand randread 4k "$RAND_MB" --runtime=30)"
  rm -f "$M"/*.dat
  read -r c s rd < <(timeout 300 python3 - "$D/meta" "$FILES" <<'PY' || echo "failed failed failed"
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
t = time.perf_counter()
for i in range(n):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
c = n / (time.perf_counter() - t)
t = time.perf_counter()
for i in range(n):
    os.stat(f"{d}/f{i}")
s = n / (time.perf_counter() - t)
t = time.perf_counter()
names = os.listdir(d)
rd = (time.perf_counter() - t) * 1000
assert len(names) == n
print(f"{c:.0f} {s:.0f} {rd:.1f}")
PY
)
  add "$t.create" "$c"; add "$t.stat" "$s"; add "$t.readdir" "$rd"
  echo "$t, round $2: seqw ${R[$t.seqw]##* } seqr ${R[$t.seqr]##* } randw ${R[$t.randw]##* } randr ${R[$t.randr]##* } create $c stat $s readdir $rd" >&2
  t0=$(date +%s.%N)
  if timeout 60 mkdir -p "$D/untar" && timeout 600 tar xf "$TARBALL" -C "$D/untar" && sync -f "$D/untar"; then
    t1=$(date +%s.%N); add "$t.untar" "$(python3 -c "print('%.2f' % ($t1 - $t0))")"
  else
    add "$t.untar" failed
  fi
  # the next round starts from the same state (not timed)
  timeout 600 rm -rf "$D" || true
  [ "$t" = local ] || unmount_target "$t"
}
# ROUNDS=N repeats every column N times, the columns taking turns, and reports each measure's
# median (with its range): one pass gives one sample per row, and this machine's noise moved
# single samples by a third. Each round starts one column later than the one before, so no
# column always follows the same one (and whatever it leaves running).
read -ra ORDER <<< "${TOOLS:-local plain graviton graviton-wb s3fs rclone}"
for r in $(seq "${ROUNDS:-1}"); do
  for i in "${!ORDER[@]}"; do
    column "${ORDER[$(( (i + r - 1) % ${#ORDER[@]} ))]}" "$r"
  done
done
for t in ${TOOLS:-local graviton graviton-wb s3fs rclone}; do R[$t.rss]=${PEAK[$t]:-n/a}; done
if [ -n "$(pgrep -f "graviton mount.*$DB" || true)" ]; then sleep 2; fi
for d in "$DB" "${DB}_wb"; do
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $d" || true
done

echo "| measure | local dir | plain S3 client | graviton (PostgreSQL + S3) | graviton -o writeback | s3fs | rclone mount (vfs-cache writes) |"
echo "|---|---|---|---|---|---|---|"
median() { # of the samples in $1: "m" for one, "m (lo-hi)" for more; a failed one shows
  python3 - "$1" <<'PY'
import sys
v = sys.argv[1].split()
if not v or any(x == "failed" for x in v) or len(v) == 1:
    print(" ".join(v) if v else "")
else:
    f = sorted(float(x) for x in v)
    m = f[len(f) // 2] if len(f) % 2 else (f[len(f) // 2 - 1] + f[len(f) // 2]) / 2
    print("%s (%s-%s)" % (round(m, 2), round(f[0], 2), round(f[-1], 2)))
PY
}
cell() { median "${R[$1]:-}"; }
row() {
  echo "| $1 | $(cell "local.$2") | $(cell "plain.$2") | $(cell "graviton.$2") | $(cell "graviton-wb.$2") | $(cell "s3fs.$2") | $(cell "rclone.$2") |"
}
row "fio sequential write 1 MiB, ${SEQ_MB} MiB, end fsync (MiB/s)" seqw
row "fio sequential read 1 MiB, remounted, caches dropped (MiB/s)" seqr
row "fio random write 4 KiB, ${RAND_MB} MiB, end fsync, 30 s cap (MiB/s)" randw
row "fio random read 4 KiB, remounted, 30 s cap (MiB/s)" randr
row "create (files/s, ${FILES} files)" create
row "stat (files/s)" stat
row "readdir of ${FILES} entries (ms)" readdir
row "untar of RocksDB's source tree (s)" untar
row "peak RSS of the mount daemon (MiB)" rss
ratio() { # medians of $1 over $2, as "x.xx"
  python3 - "${R[$1]:-}" "${R[$2]:-}" <<'PY'
import sys
def med(s):
    v = sorted(float(x) for x in s.split() if x != "failed")
    return v[len(v) // 2] if v else None
a, b = med(sys.argv[1]), med(sys.argv[2])
print("%.2f" % (a / b) if a and b else "n/a")
PY
}
echo
echo "Against the plain S3 client (the sequential rows' ceiling on this server):"
for t in graviton graviton-wb s3fs rclone; do
  echo "- $t: sequential write $(ratio "$t.seqw" plain.seqw), sequential read $(ratio "$t.seqr" plain.seqr)"
done
