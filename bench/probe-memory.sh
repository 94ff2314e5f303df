#!/usr/bin/env bash
# The daemon's peak memory (VmHWM) under a writer of single bytes at scattered offsets, the
# case that grows per-span and per-extent state: N pwrite()s of one byte at random offsets
# in a 4 GiB file, closed; then the file is read back whole. Embedded volume, mounted with
# cache_mb=16,dirty_mb=16 so that the caps are small next to what the daemon holds besides.
# usage: bench/probe-memory.sh GRAVITON_BINARY [N]     (N defaults to 1,000,000)
#        bench/probe-memory.sh GRAVITON_BINARY randupdate [SECONDS]
#   randupdate: default options instead; fio updates a 2 GiB file in place with 4 KiB random
#   writes for SECONDS (default 300), the kind of run that fragments an extent map
set -euo pipefail
BIN=$(realpath "$1") N=${2:-1000000}
W=$(mktemp -d /var/tmp/graviton-probe.XXXX)
mkdir "$W/mnt"
cleanup() { fusermount3 -u "$W/mnt" 2>/dev/null || true; sleep 1; rm -rf "$W"; }
trap cleanup EXIT
"$BIN" format "$W/vol" >/dev/null
if [ "$N" = randupdate ]; then "$BIN" mount "$W/vol" "$W/mnt"
else "$BIN" mount "$W/vol" "$W/mnt" -o cache_mb=16,dirty_mb=16; fi
PID=$(cat "$W/vol/graviton.pid")
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$PID/status"; }
if [ "$N" = randupdate ]; then
  fio --name=prep --directory="$W/mnt" --filename=u.dat --rw=write --bs=1M --size=2G --end_fsync=1 >/dev/null
  fio --name=upd --directory="$W/mnt" --filename=u.dat --rw=randwrite --bs=4k --size=2G \
      --time_based --runtime="${3:-300}" --ioengine=psync --fsync=256 >/dev/null
  echo "random updates for ${3:-300} s: peak_rss_mib=$(hwm) (cache_mb + dirty_mb = 512)"
  exit 0
fi
t0=$(date +%s.%N)
python3 - "$W/mnt/f" "$N" <<'PY'
import os, random, sys
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
rng = random.Random(1)
for _ in range(n):
    os.pwrite(fd, b"x", rng.randrange(4 << 30))
os.close(fd)
PY
t1=$(date +%s.%N)
after_write=$(hwm)
cat "$W/mnt/f" | cksum >/dev/null
echo "writes=$N seconds=$(python3 -c "print('%.1f' % ($t1 - $t0))") peak_rss_after_writes_mib=$after_write peak_rss_after_read_mib=$(hwm)"
