#!/usr/bin/env bash
# A million files on one volume, through a mount (embedded by default, or the loopback
# PostgreSQL server of scripts/pg.sh): 90 directories of 10,000 files, one of 100,000, and one
# of 1,000 (the per-entry yardstick for `ls -l`). Then, from a fresh mount with the kernel's
# caches dropped:
#   - the create rate of each 100,000 files (it should stay flat);
#   - `ls -f` and `ls -l` of the 100,000-entry directory, and `ls -l` of the 1,000-entry one
#     (per entry: `ls -l` asks for attributes and two xattrs of each);
#   - `find` over the whole tree, `du -s`;
#   - `graviton status`, `fsck` and `dump` (seconds, and the peak RSS of whichever process ran
#     them: the daemon for a mounted embedded volume);
#   - the daemon's RSS (now and peak).
# usage: bench/scale-million.sh [rocksdb|postgres]   (BIG, DIRS, PER_DIR to scale down)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --bin graviton >/dev/null
G="$GRAVITON_BIN"
ENGINE="${1:-rocksdb}"
DIRS="${DIRS:-90}"
PER_DIR="${PER_DIR:-10000}"
BIG="${BIG:-100000}"
source bench/scratch-volume.sh million
new_volume "$ENGINE"

daemon_pid() { pgrep -f "graviton.* $W/mnt" | head -1; }
rss() { awk -v k="$1" '$1 == k":" {printf "%.0f MiB", $2 / 1024}' "/proc/$(daemon_pid)/status"; }
fresh_mount() {
  fusermount3 -u "$W/mnt" 2>/dev/null || true; sleep 1
  "$G" mount "$SRC" "$W/mnt"
  sync; echo 3 > /proc/sys/vm/drop_caches
}
# seconds a command takes (its output discarded)
secs() {
  local t0; t0=$(date +%s.%N)
  "$@" > /dev/null
  echo "$(date +%s.%N) - $t0" | bc
}
# seconds and peak RSS of a graviton command (run here, or by the daemon it asks)
measured() {
  local out="$W/time.out" e m
  /usr/bin/time -f '%e %M' -o "$out" "$G" "$@" > /dev/null 2>&1 || true
  read -r e m < "$out"
  printf '%s s; the command'"'"'s peak RSS %.0f MiB, the daemon'"'"'s %s' "$e" "$(echo "$m / 1024" | bc -l)" "$(rss VmHWM)"
}

"$G" mount "$SRC" "$W/mnt"
echo "== $ENGINE: $DIRS directories of $PER_DIR files, one of $BIG, one of 1,000"
python3 - "$W/mnt/tree" "$DIRS" "$PER_DIR" "$BIG" <<'PY'
import os, sys, time
root, dirs, per_dir, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
plan = [("d%d" % i, per_dir) for i in range(dirs)] + [("big", big), ("small", 1000)]
made, t0, last = 0, time.monotonic(), time.monotonic()
for name, n in plan:
    d = os.path.join(root, name)
    os.makedirs(d)
    for i in range(n):
        os.close(os.open(os.path.join(d, "f%d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
        made += 1
        if made % 100000 == 0:
            now = time.monotonic()
            print("created %7d: %6.0f files/s over the last 100,000" % (made, 100000 / (now - last)), flush=True)
            last = now
print("created %d files in %.0f s (%.0f files/s)" % (made, time.monotonic() - t0, made / (time.monotonic() - t0)))
PY
echo "daemon after creating: RSS $(rss VmRSS), peak $(rss VmHWM)"

fresh_mount
t=$(secs ls -f "$W/mnt/tree/big")
echo "ls -f of $BIG entries: $t s"
fresh_mount
t=$(secs ls -l "$W/mnt/tree/big")
echo "ls -l of $BIG entries: $t s ($(echo "$t * 1000000 / $BIG" | bc) µs per entry)"
fresh_mount
t=$(secs ls -l "$W/mnt/tree/small")
echo "ls -l of 1,000 entries: $t s ($(echo "$t * 1000" | bc) µs per entry)"
fresh_mount
echo "find: $(secs find "$W/mnt/tree") s"
fresh_mount
echo "du -s: $(secs du -s "$W/mnt/tree") s"
echo "daemon after find and du: RSS $(rss VmRSS), peak $(rss VmHWM)"
echo "status: $(measured status "$SRC")"
echo "fsck: $(measured fsck "$SRC")"
echo "dump: $(measured dump "$SRC" --output "$W/dump.jsonl")  ($(du -h "$W/dump.jsonl" | cut -f1))"
echo "daemon at the end: RSS $(rss VmRSS), peak $(rss VmHWM)"
