#!/usr/bin/env bash
# Small-file creates through a fresh mount: 2,000 files of 4 KiB, each created, written and
# closed by one Python loop; prints files per second. For comparing two builds alternately.
# usage: bench/probe-small-files.sh GRAVITON_BINARY embedded|pg
#   pg: metadata in a scratch database on the test server (scripts/pg.sh), blocks in a folder
#   FORMAT_OPTS="--small-blocks 64k": more options for `graviton format`
#   QUOTA=1: the files go in a directory with a quota (and the volume has one too)
set -euo pipefail
BIN=$(realpath "$1") KIND=$2
cd "$(dirname "$0")/.."
source scripts/pg.sh >/dev/null
W=$(mktemp -d /var/tmp/graviton-probe.XXXX)
mkdir "$W/mnt"
export XDG_STATE_HOME="$W/state"
if [ "$KIND" = pg ]; then
  DB="graviton_probe_$$"
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
  SRC="${GRAVITON_TEST_PG%/*}/$DB"
  "$BIN" format ${FORMAT_OPTS:-} --store "file://$W/blocks" "$SRC" >/dev/null
else
  SRC="$W/vol"
  "$BIN" format ${FORMAT_OPTS:-} "$SRC" >/dev/null
fi
cleanup() {
  fusermount3 -u "$W/mnt" 2>/dev/null || true
  sleep 1
  rm -rf "$W"
  [ "$KIND" != pg ] || runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB" || true
}
trap cleanup EXIT
"$BIN" mount "$SRC" "$W/mnt"
mkdir "$W/mnt/d"
if [ -n "${QUOTA:-}" ]; then
  "$BIN" quota set --path /d --bytes 1t "$SRC" >/dev/null
  "$BIN" quota set --volume --bytes 1t "$SRC" >/dev/null
fi
python3 - "$W/mnt/d" <<'PY'
import os, sys, time
d, data = sys.argv[1], b"x" * 4096
t = time.time()
for i in range(2000):
    with open(f"{d}/f{i}", "wb") as f:
        f.write(data)
print(f"{2000 / (time.time() - t):.0f}")
PY
