# Sourced by the scale probes: a scratch folder `$W` (state in `$W/state`, mountpoint
# `$W/mnt`) removed on exit with its mount and database, and `new_volume ENGINE` that formats
# a fresh volume and sets `SRC`: embedded in `$W/vol`, or on the loopback PostgreSQL server of
# scripts/pg.sh (a database of its own, blocks in `$W/vol/blocks`). Needs `G` (the binary).
# usage: source bench/scratch-volume.sh NAME
W=$(mktemp -d "/var/tmp/graviton-$1.XXXX")
export XDG_STATE_HOME="$W/state"
DB=""
cleanup() {
  fusermount3 -u "$W/mnt" 2>/dev/null || true; sleep 1
  if [ -n "$DB" ]; then
    runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB" || true
  fi
  rm -rf "$W"
}
trap cleanup EXIT

new_volume() {
  fusermount3 -u "$W/mnt" 2>/dev/null || true
  rm -rf "$W/vol" "$W/mnt" && mkdir -p "$W/mnt"
  if [ "$1" = postgres ]; then
    source scripts/pg.sh
    DB="graviton_scratch_$$"
    runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
    SRC="${GRAVITON_TEST_PG%/*}/$DB"
    "$G" format --store "file://$W/vol/blocks" "$SRC" > /dev/null
  else
    SRC="$W/vol"
    "$G" format "$SRC" > /dev/null
  fi
}
