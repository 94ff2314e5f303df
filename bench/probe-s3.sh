#!/usr/bin/env bash
# One workload on a fresh Graviton volume (PostgreSQL metadata, blocks in a loopback s3rver),
# then where its time went: the mount's own metrics (`-o metrics`), summed per name, largest
# first. For A/B comparisons of one change; the side-by-side table is bench/bench-s3.sh.
# usage: bench/probe-s3.sh untar|create|readdir|seqw|seqr|randw|randr
#   FORMAT_OPTS="--small-blocks 0" and MOUNT_OPTS="cache_mb=512" pass options through;
#   STRACE=1 (readdir) shows the listing's getdents64 calls;
#   PERF=1 records the daemon's profile of the timed part in /var/tmp/graviton-probe/perf.data.
# Needs root, and what bench/bench-s3.sh installs (s3rver under /var/cache/graviton/s3rver).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD="${1:?usage: bench/probe-s3.sh untar|create|readdir|seqw|seqr|randw|randr}"
source scripts/env.sh
cargo build --release --locked --bin graviton >/dev/null
source scripts/pg.sh >/dev/null
G="${PROBE_BIN:-$GRAVITON_BIN}"  # PROBE_BIN=path compares another build
source scripts/s3rver.sh
W=/var/tmp/graviton-probe
rm -rf "$W" && mkdir -p "$W"/{m,state}
export XDG_STATE_HOME="$W/state"
S3_PORT=54341 METRICS=127.0.0.1:54342
start_s3rver "$W" "$S3_PORT" b
DB="graviton_probe_$$"
cleanup() {
  # the daemon may still upload (writeback): wait for it before stopping the server
  local gp
  gp=$(pgrep -f "graviton mount.* $W/m" | head -1 || true)
  fusermount3 -u "$W/m" 2>/dev/null || fusermount3 -uz "$W/m" 2>/dev/null || true
  [ -z "$gp" ] || timeout 150 tail --pid="$gp" -f /dev/null || true
  kill "$SP" 2>/dev/null || true
  wait "$SP" 2>/dev/null || true
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB" || true
}
trap cleanup EXIT
runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
VOL="${GRAVITON_TEST_PG%/*}/$DB"
# shellcheck disable=SC2086
"$G" format ${FORMAT_OPTS:-} --store "s3://b?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1" "$VOL" >/dev/null
mount_it() { "$G" mount "$VOL" "$W/m" -o "allow_other,metrics=$METRICS${MOUNT_OPTS:+,$MOUNT_OPTS}"; }
remount() {
  local gp
  gp=$(pgrep -f "graviton mount.* $W/m" | head -1)
  fusermount3 -u "$W/m"; timeout 150 tail --pid="$gp" -f /dev/null; sync; echo 3 > /proc/sys/vm/drop_caches; mount_it; }
mount_it
mkdir "$W/m/u"
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
declare -A CPU0
# marks the start of the timed part: CPU time of the daemon (G) and s3rver (S) from here on
mark() {
  echo "daemon RSS before the timed part: $(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$(pgrep -f "graviton mount.* $W/m" | head -1)/status") MiB"
  CPU0[G]=$(cpu_s "$(pgrep -f "graviton mount.* $W/m" | head -1)") CPU0[S]=$(cpu_s "$SP")
  FAULTS0=$(faults)
  if [ -n "${PERF:-}" ]; then
    perf record -q ${PERF_CG:--g} -o "$W/perf.data" -p "$(pgrep -f "graviton mount.* $W/m" | head -1)" 2>/dev/null &
    PERF_PID=$!
    sleep 0.5
  fi
}
now() { date +%s.%N; }
# the daemon's minor page faults: each first touch of fresh memory (which the kernel zeroes)
faults() { awk '{print $10}' "/proc/$(pgrep -f "graviton mount.* $W/m" | head -1)/stat"; }
cpu_used() {
  local pid=$SP
  [ "$1" = S ] || pid=$(pgrep -f "graviton mount.* $W/m" | head -1)
  python3 -c "print('%.2f' % ($(cpu_s "$pid") - ${CPU0[$1]}))"
}
case "$WORKLOAD" in
  untar)
    SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/*librocksdb-sys-*/ | head -1)
    tar cf "$W/src.tar" -C "$SRC" .
    mark; t0=$(now); tar xf "$W/src.tar" -C "$W/m/u"; sync -f "$W/m/u"; t1=$(now)
    python3 -c "print('untar of RocksDB\'s source tree: %.2f s' % ($t1 - $t0))" ;;
  create)
    mark
    python3 - "$W/m/u" <<'PY'
import os, sys, time
d = sys.argv[1]
t = time.perf_counter()
for i in range(2000):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
print("create: %.0f files/s" % (2000 / (time.perf_counter() - t)))
PY
    ;;
  readdir)
    # as bench/bench-s3.sh: 2000 creates and stats, then one timed listing, in one process
    # (listed from a new process, the first listing took 1.0-2.9 ms and the others 0.75-1.2,
    # not the bench's 1.2-1.6); DIRS=N does that in N directories, REPEAT=N lists each N times.
    # The metrics and PERF cover the creates and stats too.
    mark
    # STRACE=1 shows each getdents64 call of the listing with its time
    ${STRACE:+strace -T -e trace=getdents64} python3 - "$W/m/u" "${DIRS:-1}" <<'PY'
import os, sys, time
for d in range(int(sys.argv[2])):
    d = f"{sys.argv[1]}/d{d}"
    os.mkdir(d)
    for i in range(2000):
        os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    for i in range(2000):
        os.stat(f"{d}/f{i}")
    for r in range(int(os.environ.get("REPEAT", "1"))):
        t = time.perf_counter()
        n = len(os.listdir(d))
        print("readdir of %d entries%s: %.2f ms" % (n, " (again)" if r else "", (time.perf_counter() - t) * 1000))
PY
    ;;
  seqr)
    dd if=/dev/urandom of="$W/m/u/big" bs=1M count=256 status=none
    remount
    mark; t0=$(now); cat "$W/m/u/big" >/dev/null; t1=$(now)
    python3 -c "print('sequential read of 256 MiB: %.0f MiB/s' % (256 / ($t1 - $t0)))" ;;
  seqw)
    # REWRITE=1: the timed write overwrites the file a first (untimed) write left
    if [ -n "${REWRITE:-}" ]; then
      fio --name=s --filename="$W/m/u/big" --rw=write --bs=1M --size=256M --ioengine=psync \
          --end_fsync=1 >/dev/null 2>&1
      sleep "${SETTLE:-5}"
    fi
    mark
    fio --name=s --filename="$W/m/u/big" --rw=write --bs=1M --size=256M --ioengine=psync \
        --end_fsync=1 --output-format=json 2>/dev/null |
      python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("sequential writes: %.1f MiB/s" % (j["write"]["bw_bytes"]/1048576))' ;;
  randw)
    mark
    fio --name=w --filename="$W/m/u/big" --rw=randwrite --bs=4k --size=64M --ioengine=psync \
        --end_fsync=1 --runtime=30 --output-format=json 2>/dev/null |
      python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("4 KiB random writes: %.1f MiB/s" % (j["write"]["bw_bytes"]/1048576))' ;;
  randr)
    # RAND_MB=1024: a file larger than the block cache, so most reads miss
    dd if=/dev/urandom of="$W/m/u/big" bs=1M count="${RAND_MB:-64}" status=none
    remount
    mark
    # RAND_IOS=N: only N reads (sparse reads, as a database's lookups), and their mean latency
    fio --name=r --filename="$W/m/u/big" --rw=randread --bs=4k --size="${RAND_MB:-64}M" --ioengine=psync \
        --runtime=30 ${RAND_IOS:+--number_ios=$RAND_IOS} --output-format=json 2>/dev/null |
      python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; print("4 KiB random reads: %.1f MiB/s, %d reads, mean latency %.2f ms" % (r["bw_bytes"]/1048576, r["total_ios"], r["clat_ns"]["mean"]/1e6))' ;;
  *) echo "unknown workload $WORKLOAD" >&2; exit 2 ;;
esac
[ -z "${PERF_PID:-}" ] || { kill -INT "$PERF_PID"; sleep 1; }
echo "CPU seconds in the workload's timed part: graviton daemon $(cpu_used G), s3rver $(cpu_used S)"
echo "daemon page faults in the timed part: $(( $(faults) - FAULTS0 ))"
curl -s "http://$METRICS/metrics" | python3 -c '
import re, sys
sums, counts = {}, {}
for line in sys.stdin:
    m = re.match(r"(\w+)_(sum|count)\{(.*)\} (\S+)", line)
    if m:
        name, kind, labels, v = m.groups()
        (sums if kind == "sum" else counts)[name + "{" + labels + "}"] = float(v)
for k in sorted(sums, key=lambda k: -sums[k])[:20]:
    print(f"{sums[k]:10.6f} s {int(counts.get(k, 0)):7d}  {k}")
'
# block cache outcomes and bytes fetched (counters since the mount)
curl -s "http://$METRICS/metrics" | grep -E "^graviton_(block_cache_total|bytes_fetched)" || true
echo "daemon peak RSS: $(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$(pgrep -f "graviton mount.* $W/m" | head -1)/status") MiB"
