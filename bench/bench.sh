#!/usr/bin/env bash
# Benchmarks a Graviton mount (embedded default: RocksDB + local blocks) against a plain local
# directory on the same disk and against the FUSE ceiling (examples/null_fuse.rs: a filesystem
# that stores nothing and answers at once, mounted with Graviton's kernel settings), in the same
# run, and prints a Markdown table of ratios.
# usage: bench/bench.sh [WORKDIR]     (default /var/tmp/graviton-bench; needs root for drop_caches)
#        ENGINE=postgres bench/bench.sh   metadata in a scratch database on the test server
#                                           (scripts/pg.sh), blocks in WORKDIR/blocks
# Sizes can be scaled down for a quick look: SEQ_MB=1024 RAND_MB=256 RSS_MB=2048 FILES=10000
# BENCH_BIN=/path/to/graviton measures that build instead of this checkout's (A/B runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
source bench/source-tree.sh
[ -n "${BENCH_BIN:-}" ] || cargo build --release --locked --bin graviton >/dev/null
cargo build --release --locked --example null_fuse >/dev/null
NULL_FUSE="$CARGO_TARGET_DIR/release/examples/null_fuse"
WORK="${1:-/var/tmp/graviton-bench}"
SEQ_MB="${SEQ_MB:-1024}" RAND_MB="${RAND_MB:-256}" RSS_MB="${RSS_MB:-2048}" FILES="${FILES:-10000}"
G="${BENCH_BIN:-$GRAVITON_BIN}"
VOL="$WORK/vol" MNT="$WORK/mnt" LOCAL="$WORK/local" CEIL="$WORK/ceiling"
export XDG_STATE_HOME="$WORK/state"  # a PostgreSQL mount's state, found again below
STATE="$VOL"  # where the daemon writes graviton.pid
if [ "${ENGINE:-embedded}" = postgres ]; then
  source scripts/pg.sh
  DB="graviton_bench_$$"
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
  VOL="${GRAVITON_TEST_PG%/*}/$DB"
  STATE=/nonexistent  # known once mounted
fi

unmount() { # and wait until the daemon has committed everything and exited
  local pid; pid=$(cat "$STATE/graviton.pid" 2>/dev/null || true)
  fusermount3 -u "$MNT" 2>/dev/null || true
  # (a daemon whose parent never reaps it lingers as a zombie: that counts as exited)
  # (the leader shows Z before its other threads have exited and released the volume)
  while [ -n "$pid" ] && [ -e "/proc/$pid" ] && { [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] ||
      [ "$(ls "/proc/$pid/task" 2>/dev/null | wc -l)" -gt 1 ]; }; do
    sleep 0.1
  done
}
mount_fresh() { unmount; "$G" mount "$VOL" "$MNT" -o "${MOUNT_OPTS:-allow_other}"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
cleanup() { unmount; fusermount3 -u "$CEIL" 2>/dev/null || true; }
trap cleanup EXIT

unmount
fusermount3 -u "$CEIL" 2>/dev/null || true
rm -rf "$WORK" && mkdir -p "$MNT" "$LOCAL" "$CEIL"
"$NULL_FUSE" "$CEIL" &
for _ in $(seq 100); do mountpoint -q "$CEIL" && break; sleep 0.1; done
if [ "${ENGINE:-embedded}" = postgres ]; then
  "$G" format --store "file://$WORK/blocks" "$VOL" >/dev/null
else
  "$G" format "$VOL" >/dev/null
fi
mount_fresh
if [ "${ENGINE:-embedded}" = postgres ]; then
  STATE=$(dirname "$(grep -l . "$XDG_STATE_HOME"/graviton/*/*/graviton.pid | head -1)")
fi

fio_bw() { # dir name rw bs size-MB [extra…] → MiB/s (read or write side)
  local dir=$1 name=$2 rw=$3 bs=$4 size=$5; shift 5
  fio --name="$name" --directory="$dir" --filename="$name.dat" --rw="$rw" --bs="$bs" --size="${size}M" \
      --ioengine=psync --output-format=json "$@" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("%.1f" % ((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1048576))'
}

declare -A R
for target in local ceiling graviton; do
  case $target in local) D="$LOCAL" ;; ceiling) D="$CEIL" ;; graviton) D="$MNT" ;; esac
  reopen() { drop_caches; if [ $target = graviton ]; then mount_fresh; fi; }
  R[$target.seqw]=$(fio_bw "$D" seq write 1M "$SEQ_MB" --end_fsync=1)
  reopen
  R[$target.seqr]=$(fio_bw "$D" seq read 1M "$SEQ_MB")
  R[$target.randw]=$(fio_bw "$D" rand randwrite 4k "$RAND_MB" --fsync=256 --end_fsync=1 --runtime=30)
  reopen
  R[$target.randr]=$(fio_bw "$D" rand randread 4k "$RAND_MB" --runtime=30)
  rm -f "$D"/*.dat
  sync  # the disk done with fio's files before the metadata rows (else the local dir's stall)
  # metadata rates and readdir, from one Python process per target
  read -r c s u rd cw u4 < <(python3 - "$D/meta" "$FILES" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
os.makedirs(d + "-small", exist_ok=True)
data = b"x" * 4096
t = time.perf_counter()
for i in range(n):
    with open(f"{d}-small/f{i}", "wb") as f:
        f.write(data)
cw = n / (time.perf_counter() - t)
assert len(os.listdir(d + "-small")) == n
t = time.perf_counter()
for i in range(n):
    os.unlink(f"{d}-small/f{i}")
u4 = n / (time.perf_counter() - t)
t = time.perf_counter()
for i in range(n):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
c = n / (time.perf_counter() - t)
t = time.perf_counter()
for i in range(n):
    os.stat(f"{d}/f{i}")
s = n / (time.perf_counter() - t)
t = time.perf_counter()
names = [e.name for e in os.scandir(d)]
rd = (time.perf_counter() - t) * 1000
assert len(names) == n
t = time.perf_counter()
for i in range(n):
    os.unlink(f"{d}/f{i}")
u = n / (time.perf_counter() - t)
print(f"{c:.0f} {s:.0f} {u:.0f} {rd:.1f} {cw:.0f} {u4:.0f}")
PY
)
  R[$target.create]=$c R[$target.stat]=$s R[$target.unlink]=$u R[$target.readdir]=$rd
  R[$target.cwc]=$cw R[$target.unlink4k]=$u4
  # untar, then rsync -a, of a real source tree (bench/source-tree.sh)
  source_tree "$WORK"
  TARBALL="$WORK/src.tar" TREE="$WORK/tree"
  timed() { local t0 t1; t0=$(date +%s.%N); "$@"; sync -f "$D" 2>/dev/null || sync; t1=$(date +%s.%N); python3 -c "print('%.2f' % ($t1 - $t0))"; }
  mkdir -p "$D/untar"
  sync
  R[$target.untar]=$(timed tar xf "$TARBALL" -C "$D/untar")
  rm -rf "$D/untar"
  sync
  R[$target.rsync]=$(timed rsync -a "$TREE/" "$D/rsync/")
  rm -rf "$D/rsync"
  # the null filesystem keeps no bytes: the rows below are for real targets
  [ $target != ceiling ] || { fusermount3 -u "$CEIL"; continue; }
  # seeded random updates (writes, mmap, punched holes, truncates) after 12,000 small files
  # were created and deleted; the content's hash must match the local directory's
  read -r R[$target.updates] R[$target.updates_sha] < <(python3 bench/random-updates.py "$D" 20000 1 --history 12000)
done
[ "${R[local.updates_sha]}" = "${R[graviton.updates_sha]}" ] || { echo "random updates: content differs from the local directory's" >&2; exit 1; }

# peak RSS of the daemon while writing RSS_MB
mount_fresh
PID=$(cat "$STATE/graviton.pid")
dd if=/dev/zero of="$MNT/rss.dat" bs=1M count="$RSS_MB" conv=fsync status=none
dd if=/dev/urandom of="$MNT/rss2.dat" bs=1M count="$RSS_MB" conv=fsync status=none
RSS=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$PID/status)

ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
row() { # label key [speed: the figure is a time, so the ratios are inverted]
  local l=${R[local.$2]} c=${R[ceiling.$2]:-–} g=${R[graviton.$2]} to_l to_c=–
  if [ "${3:-}" = speed ]; then
    to_l=$(ratio "$l" "$g"); [ "$c" = – ] || to_c=$(ratio "$c" "$g")
  else
    to_l=$(ratio "$g" "$l"); [ "$c" = – ] || to_c=$(ratio "$g" "$c")
  fi
  echo "| $1 | $l | $c | $g | $to_l | $to_c |"
}
echo "| measure | local dir | FUSE ceiling | graviton | graviton / local | graviton / ceiling |"
echo "|---|---|---|---|---|---|"
row "fio sequential write 1 MiB, ${SEQ_MB} MiB, end fsync (MiB/s)" seqw
row "fio sequential read 1 MiB, caches dropped (MiB/s)" seqr
row "fio random write 4 KiB, ${RAND_MB} MiB, fsync every 256 writes (MiB/s)" randw
row "fio random read 4 KiB, caches dropped (MiB/s)" randr
row "create empty files (files/s, ${FILES} files)" create
row "stat (files/s)" stat
row "unlink empty files (files/s)" unlink
row "readdir of ${FILES} entries (ms; ratios are speed)" readdir speed
row "create + write 4 KiB + close (files/s)" cwc
row "unlink 4 KiB files after a readdir of them (files/s)" unlink4k
row "20,000 seeded random updates after 12,000 files created and deleted (s; ratios are speed)" updates speed
row "untar of a 10,000-file source tree (s; ratios are speed)" untar speed
row "rsync -a of the same tree (s; ratios are speed)" rsync speed
echo "| daemon peak RSS writing 2 × ${RSS_MB} MiB (MiB) | – | – | ${RSS} | – | – |"
