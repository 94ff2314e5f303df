#!/usr/bin/env bash
# Untar, then rsync -a, of a 10,000-file source tree (bench/source-tree.sh) onto an embedded
# volume and onto a PostgreSQL volume in the default mode (blocks in a folder, those under
# 64 KiB in the database), with one build, the two taking turns; prints each time and the
# PostgreSQL / embedded ratio.
# usage: bench/probe-untar.sh [GRAVITON_BINARY]    ROUNDS=2 (default)
#   MOUNT_OPTS=…: more mount options for both; PG_FORMAT_OPTS=…: more format options for the
#   PostgreSQL volume (e.g. "--small-blocks 0" for every block in the folder);
#   PROBE_PG_PORT=…: another loopback server than the test server (which runs with fsync=off),
#   e.g. one with the default fsync=on
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source bench/source-tree.sh
source scripts/pg.sh >/dev/null
PG_PORT=${PROBE_PG_PORT:-$PG_PORT}
GRAVITON_TEST_PG="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
if [ -n "${1:-}" ]; then BIN=$(realpath "$1"); else
  cargo build --release --locked --bin graviton >/dev/null; BIN=$GRAVITON_BIN; fi
W=/var/tmp/graviton-probe-untar
mkdir -p "$W" && source_tree "$W"
DB="graviton_probe_untar_$$"
cleanup() {
  fusermount3 -u "$W/mnt" 2>/dev/null || true
  sleep 1
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB" || true
}
trap cleanup EXIT
export XDG_STATE_HOME="$W/state"
timed() { local t0 t1; t0=$(date +%s.%N); "$@"; sync -f "$W/mnt"; t1=$(date +%s.%N); python3 -c "print('%.2f' % ($t1 - $t0))"; }
run() { # engine → "untar rsync" seconds on a fresh volume
  rm -rf "$W/vol" "$W/blocks" "$W/state" && mkdir -p "$W/mnt"
  local src=$W/vol
  if [ "$1" = pg ]; then
    runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
    src="${GRAVITON_TEST_PG%/*}/$DB"
    "$BIN" format ${PG_FORMAT_OPTS:-} --store "file://$W/blocks" "$src" >/dev/null
  else
    "$BIN" format "$src" >/dev/null
  fi
  "$BIN" mount "$src" "$W/mnt" ${MOUNT_OPTS:+-o "$MOUNT_OPTS"}
  mkdir "$W/mnt/untar"
  local u r
  u=$(timed tar xf "$W/src.tar" -C "$W/mnt/untar")
  r=$(timed rsync -a "$W/tree/" "$W/mnt/rsync/")
  fusermount3 -u "$W/mnt"
  sleep 1
  echo "$u $r"
}
for round in $(seq "${ROUNDS:-2}"); do
  read -r eu er < <(run embedded)
  read -r pu pr < <(run pg)
  python3 -c "import sys; eu, er, pu, pr = map(float, sys.argv[2:]); print(f'round {sys.argv[1]}: untar embedded {eu:.2f} s, PostgreSQL {pu:.2f} s ({pu/eu:.1f}x); rsync -a embedded {er:.2f} s, PostgreSQL {pr:.2f} s ({pr/er:.1f}x)')" "$round" "$eu" "$er" "$pu" "$pr"
done
