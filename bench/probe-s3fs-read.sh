#!/usr/bin/env bash
# s3fs's side of bench/probe-s3.sh seqr: 256 MiB written through s3fs to a fresh loopback
# s3rver, remounted with caches dropped, read back with cat; prints the rate and the CPU seconds
# s3rver and s3fs spent reading (compare with the probe's "CPU seconds" line).
# Needs root and what bench/bench-s3.sh installs (s3fs, s3rver).
set -euo pipefail
W=/var/tmp/s3fs-probe
S3RVER=/var/cache/graviton/s3rver/node_modules/.bin/s3rver
[ -x "$S3RVER" ] || { echo "s3rver is missing: run bench/bench-s3.sh once" >&2; exit 1; }
fusermount3 -uz "$W/m" 2>/dev/null || true
rm -rf "$W" && mkdir -p "$W"/{m,s3}
"$S3RVER" -d "$W/s3" -a 127.0.0.1 -p 54351 -s --no-vhost-buckets --configure-bucket b >"$W/log" 2>&1 &
SP=$!
trap 'fusermount3 -uz "$W/m" 2>/dev/null || true; kill $SP 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/54351) 2>/dev/null && break; sleep 0.1; done
echo "S3RVER:S3RVER" > "$W/passwd" && chmod 600 "$W/passwd"
mount_it() {
  s3fs b "$W/m" -o "url=http://127.0.0.1:54351,use_path_request_style,passwd_file=$W/passwd"
  for _ in $(seq 50); do mountpoint -q "$W/m" && break; sleep 0.1; done
}
mount_it
dd if=/dev/urandom of="$W/m/big" bs=1M count=256 status=none
fusermount3 -u "$W/m"; sleep 1; sync; echo 3 > /proc/sys/vm/drop_caches; mount_it
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
FP=$(pgrep -nx s3fs)
c0=$(cpu "$SP") f0=$(cpu "$FP") t0=$(date +%s.%N)
cat "$W/m/big" > /dev/null
t1=$(date +%s.%N)
python3 -c "print('s3fs sequential read of 256 MiB: %.0f MiB/s; CPU seconds: s3rver %.2f, s3fs %.2f' % (256 / ($t1 - $t0), $(cpu "$SP") - $c0, $(cpu "$FP") - $f0))"
