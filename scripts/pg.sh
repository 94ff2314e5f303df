# Sourced by test.sh: starts a throwaway PostgreSQL server on loopback for the tests (Debian's
# packages; initdb refuses root, so the server runs as the postgres user) and exports its URL.
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PG_DIR=/var/tmp/graviton-test-pg
PG_PORT=${GRAVITON_TEST_PG_PORT:-54329}
if [ -z "$PG_BIN" ]; then
  echo "PostgreSQL server binaries not found under /usr/lib/postgresql" >&2
  return 1
fi
if ! runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
  rm -rf "$PG_DIR" && mkdir -p "$PG_DIR" && chown postgres: "$PG_DIR"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=200 -c max_pred_locks_per_transaction=256" start >/dev/null
fi
export GRAVITON_PG_BIN="$PG_BIN"
export GRAVITON_TEST_PG="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
# scratch databases of earlier runs are not needed any more
for db in $(runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'graviton_t%'" 2>/dev/null); do
  runuser -u postgres -- dropdb -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db" 2>/dev/null || true
done
