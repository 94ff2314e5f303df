#!/usr/bin/env bash
# xfstests generic/451 outside xfstests: an AIO O_DIRECT writer rewrites a 640 KiB file with a
# new pattern in a loop and checks it with a buffered and a direct read, while two readers
# read it through the page cache; prints how many stale reads the writer found (0 is right).
# On a PostgreSQL volume with the local metadata cache (the default) it finds some; with
# meta_cache=off none.
# usage: bench/probe-aio-dio-stale.sh GRAVITON_BINARY [SECONDS] [MOUNT_OPTIONS]
# Needs xfstests built by scripts/xfstests.sh (its aio-dio-cycle-write) and runs as root.
set -euo pipefail
BIN=$(realpath "$1") SECS=${2:-30} OPTS=${3:-}
cd "$(dirname "$0")/.."
TOOL=${XFSTESTS_WORK:-/var/tmp/graviton-xfstests}/xfstests/src/aio-dio-regress/aio-dio-cycle-write
[ -x "$TOOL" ] || { echo "no $TOOL: run scripts/xfstests.sh once" >&2; exit 1; }
source scripts/pg.sh >/dev/null
DB="graviton_probe_$$"
runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
URL="${GRAVITON_TEST_PG%/*}/$DB"
W=$(mktemp -d /var/tmp/graviton-probe.XXXX)
mkdir "$W/mnt"
export XDG_STATE_HOME="$W/state"
cleanup() {
  rm -f "$W/reading"
  fusermount3 -uz "$W/mnt" 2>/dev/null || true
  sleep 1
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc \
    "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
"$BIN" format --store postgres "$URL" >/dev/null
"$BIN" mount "$URL" "$W/mnt" -o "allow_other${OPTS:+,$OPTS}"
F=$W/mnt/f
touch "$W/reading"
for _ in 1 2; do
  (while [ -e "$W/reading" ]; do xfs_io -f -c "pread 0 655360" "$F" >/dev/null 2>&1; done) &
done
timeout -s TERM "$SECS" "$TOOL" -c 999999 -b 655360 "$F" 2>&1 | grep -c stale || true
rm -f "$W/reading"
wait
