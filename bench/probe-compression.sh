#!/usr/bin/env bash
# Compressed volumes against plain ones, with one build: the stored bytes of the source tree
# (bench/source-tree.sh) untarred onto an embedded volume with every block a file, for each
# `--compress`, and fio's sequential write (end fsync) and read (caches dropped, after a
# remount) of 512 MiB on a fresh volume, plain and zstd alternated (ROUNDS, default 2).
# usage: bench/probe-compression.sh GRAVITON_BINARY      (as root: drop_caches)
set -euo pipefail
G=$(realpath "$1")
cd "$(dirname "$0")/.."
source bench/source-tree.sh
W=$(mktemp -d /var/tmp/graviton-probe.XXXX)
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
bw() { # rw [fio options…] → MiB/s
  fio --name=s --directory="$W/mnt" --filename=s.dat --rw="$1" --bs=1M --size=512M --ioengine=psync \
      --output-format=json "${@:2}" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("%.0f" % ((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1048576))'
}
for _ in $(seq "${ROUNDS:-2}"); do
  for c in none zstd; do
    fresh --compress "$c"
    w=$(bw write --end_fsync=1)
    fusermount3 -u "$W/mnt"; sleep 1; sync; echo 3 > /proc/sys/vm/drop_caches
    "$G" mount "$W/vol" "$W/mnt"
    r=$(bw read)
    echo "fio, --compress $c: sequential write $w MiB/s, read $r MiB/s"
  done
done
