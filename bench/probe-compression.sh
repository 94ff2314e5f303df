#!/usr/bin/env bash
# Compressed and encrypted volumes against plain ones, with one build: the stored bytes of the
# source tree (bench/source-tree.sh) untarred onto an embedded volume with every block a file,
# for each `--compress`; what a second copy of a 1 GiB random file adds on a zstd volume; and
# fio's sequential write (end fsync) and read, and one pass of 4 KiB random reads (caches dropped, after a
# remount) of 512 MiB on a fresh volume: plain, zstd, and zstd with --encrypt alternated
# (ROUNDS, default 2).
# usage: bench/probe-compression.sh GRAVITON_BINARY      (as root: drop_caches)
set -euo pipefail
G=$(realpath "$1")
cd "$(dirname "$0")/.."
source bench/source-tree.sh
W=$(mktemp -d /var/tmp/graviton-probe.XXXX)
export GRAVITON_PASSPHRASE="probe passphrase $RANDOM$RANDOM"  # for the --encrypt volumes
cleanup() { fusermount3 -u "$W/mnt" 2>/dev/null || true; sleep 1; rm -rf "$W"; }
trap cleanup EXIT
source_tree "$W"
fresh() { # format args…: a new volume mounted on $W/mnt
  fusermount3 -u "$W/mnt" 2>/dev/null || true
  rm -rf "$W/vol" "$W/mnt" && mkdir "$W/mnt"
  "$G" format "$@" "$W/vol" >/dev/null
  "$G" mount "$W/vol" "$W/mnt"
}
logical=$(tar tvf "$W/src.tar" | awk '$1 ~ /^-/ {s += $3} END {print s}')
for c in none zstd lz4; do
  fresh --compress "$c" --small-blocks 0
  tar xf "$W/src.tar" -C "$W/mnt"
  sync -f "$W/mnt"
  fusermount3 -u "$W/mnt"; sleep 1
  stored=$(find "$W/vol/blocks" -path "$W/vol/blocks/tmp" -prune -o -type f -printf '%s\n' | awk '{s += $1} END {print s}')
  python3 -c "print('source tree, --compress %-4s: %d of %d bytes stored (%.1f%%)' % ('$c', $stored, $logical, 100.0 * $stored / $logical))"
done
zstd -3 -c "$W/src.tar" 2>/dev/null | wc -c | xargs -I{} echo "zstd -3 of the tarball: {} bytes"
stored() { find "$W/vol/blocks" -path "$W/vol/blocks/tmp" -prune -o -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
fresh --compress zstd --small-blocks 0
head -c 1G /dev/urandom > "$W/mnt/a"
sync -f "$W/mnt"; one=$(stored)
cat "$W/mnt/a" > "$W/mnt/b"  # written again through the write path (cp would share the blocks)
sync -f "$W/mnt"; two=$(stored)
python3 -c "print('1 GiB random file on --compress zstd: %d bytes stored, a second copy adds %d (%.3f%%)' % ($one, $two - $one, 100.0 * ($two - $one) / $one))"
bw() { # rw [fio options…] → MiB/s
  fio --name=s --directory="$W/mnt" --filename=s.dat --rw="$1" --bs=1M --size=512M --ioengine=psync \
      --output-format=json "${@:2}" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("%.0f" % ((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1048576))'
}
reopen() { fusermount3 -u "$W/mnt"; sleep 1; sync; echo 3 > /proc/sys/vm/drop_caches; "$G" mount "$W/vol" "$W/mnt"; }
for _ in $(seq "${ROUNDS:-2}"); do
  for v in "--compress none" "--compress zstd" "--compress zstd --encrypt"; do
    # shellcheck disable=SC2086
    fresh $v
    w=$(bw write --end_fsync=1)
    reopen
    r=$(bw read)
    reopen
    rr=$(fio --name=r --directory="$W/mnt" --filename=s.dat --rw=randread --bs=4k --size=512M \
        --ioengine=psync --runtime=30 --output-format=json 2>/dev/null |
      python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1048576))')
    echo "fio, $v: sequential write $w MiB/s, read $r MiB/s, 4 KiB random read $rr MiB/s"
  done
done
