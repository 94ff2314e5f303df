#!/usr/bin/env bash
# Clones and snapshots at scale, on an embedded volume and on a PostgreSQL one (the loopback
# server of scripts/pg.sh): FILES small files (default 100,000) in directories of 1,000, then
#   - `graviton clone` of the tree: time, entries per second, and the stored blocks before and
#     after (a clone writes none);
#   - `snapshot create` and `snapshot delete` while a writer runs (create + 4 KiB write + close,
#     one file after another): the time each took, and the writer's longest operation during
#     it, against its longest in as long a run with nothing else going on.
# usage: bench/probe-snapshots.sh [rocksdb|postgres ...]   (FILES=1000000 for the million row;
#        CLONE=0 leaves the clone out, so the snapshots copy FILES inodes, not twice as many)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --bin graviton >/dev/null
G="$GRAVITON_BIN"
FILES="${FILES:-100000}"
ENGINES=("${@:-rocksdb postgres}")
# shellcheck disable=SC2206
ENGINES=(${ENGINES[*]})
source bench/scratch-volume.sh snapshots

# the writer: creates files in DIR until STOP exists, then prints its longest operation (ms)
writer() {
  python3 - "$1" "$2" <<'PY'
import os, sys, time
d, stop = sys.argv[1], sys.argv[2]
os.makedirs(d, exist_ok=True)
worst, n, data = 0.0, 0, b"x" * 4096
while not os.path.exists(stop):
    t = time.monotonic()
    with open(os.path.join(d, "w%d" % n), "wb") as f:
        f.write(data)
    worst = max(worst, time.monotonic() - t)
    n += 1
print("%.0f ms (%d files)" % (worst * 1000, n))
PY
}

# runs "$@" while the writer runs; prints the command's seconds and the writer's worst
with_writer() {
  local stop="$W/stop" out="$W/writer.out"
  rm -f "$stop"
  writer "$W/mnt/writer-$RANDOM" "$stop" > "$out" &
  local wpid=$! t0; sleep 2
  t0=$(date +%s.%N)
  "$@" > /dev/null
  local secs; secs=$(echo "$(date +%s.%N) - $t0" | bc)
  sleep 1; touch "$stop"; wait "$wpid"
  printf '%.1f s; writer longest %s\n' "$secs" "$(cat "$out")"
}

blocks() { "$G" status --json "$1" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["stored_blocks"], "blocks,", s["stored_bytes"], "bytes")'; }

for engine in "${ENGINES[@]}"; do
  new_volume "$engine"
  "$G" mount "$SRC" "$W/mnt"
  t0=$(date +%s.%N)
  python3 - "$W/mnt/tree" "$FILES" <<'PY'
import os, sys
root, files = sys.argv[1], int(sys.argv[2])
for i in range(files):
    if i % 1000 == 0:
        d = os.path.join(root, "d%d" % (i // 1000))
        os.makedirs(d)
    with open(os.path.join(d, "f%d" % i), "wb") as f:
        f.write(b"%d\n" % i)
PY
  made=$(echo "$(date +%s.%N) - $t0" | bc)
  echo "== $engine, $FILES files (made in $(printf '%.0f' "$made") s)"
  if [ "${CLONE:-1}" != 0 ]; then
    before=$(blocks "$SRC")
    t0=$(date +%s.%N)
    "$G" clone "$W/mnt/tree" "$W/mnt/copy" 2>/dev/null
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
    printf 'clone: %.1f s, %.0f entries/s; stored before %s, after %s\n' "$secs" \
      "$(echo "($FILES + $FILES / 1000 + 1) / $secs" | bc -l)" "$before" "$(blocks "$SRC")"
  fi
  echo "writer alone: $(with_writer sleep 5)"
  echo "snapshot create: $(with_writer "$G" snapshot create s "$SRC")"
  echo "snapshot delete: $(with_writer "$G" snapshot delete s "$SRC")"
  fusermount3 -u "$W/mnt"; sleep 1
done
