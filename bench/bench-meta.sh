#!/usr/bin/env bash
# Metadata latency on a PostgreSQL volume (the loopback server of scripts/pg.sh), cold and warm
# for the RocksDB local metadata cache, and with the cache off; prints a Markdown table of
# milliseconds per operation.
#   cold: just mounted with an empty local cache;  warm: the same pass again;
#   remount: unmounted and mounted again a minute later, cache kept on disk (caught up from
#   the change log, which it replays from a minute before it was last known current).
# usage: bench/bench-meta.sh [WORKDIR]   (default /var/tmp/graviton-bench-meta)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo build --release --locked --bin graviton >/dev/null
source scripts/pg.sh
WORK="${1:-/var/tmp/graviton-bench-meta}"
G="$GRAVITON_BIN"
MNT="$WORK/mnt"
DB="graviton_benchmeta_$$"
runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB"
VOL="${GRAVITON_TEST_PG%/*}/$DB"
export XDG_STATE_HOME="$WORK/state"  # the daemons' state, found again below
STATE_ROOT="$XDG_STATE_HOME/graviton"

unmount() {
  local pid; pid=$(cat "$STATE_ROOT"/*/*/graviton.pid 2>/dev/null | head -1 || true)
  fusermount3 -u "$MNT" 2>/dev/null || true
  while [ -n "$pid" ] && [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
    sleep 0.1
  done
}
cleanup() { unmount; runuser -u postgres -- psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB" || true; }
trap cleanup EXIT
mount_with() { unmount; "$G" mount "$VOL" "$MNT" -o "allow_other,$1"; sleep 0.5; }
drop_local_cache() { rm -rf "$STATE_ROOT"/*/*/meta-cache; }

rm -rf "$WORK" && mkdir -p "$MNT"
"$G" format --store "file://$WORK/blocks" "$VOL" >/dev/null

# one pass: N creates in a fresh directory (only when asked), then stat (lookup + getattr) of
# every file, fstat (getattr alone) of open files, and listings of the 1,000- and
# 10,000-entry directories; prints ms per operation
pass() {
  python3 - "$MNT" "$1" <<'PY'
import os, sys, time
root, mode = sys.argv[1], sys.argv[2]
create = mode == "create"
def ms(t, n): return (time.perf_counter() - t) * 1000 / n
out = {}
if mode == "create-cached":  # creates with the local cache on, in a directory of their own
    os.mkdir(f"{root}/c1000")
    t = time.perf_counter()
    for i in range(1000):
        os.close(os.open(f"{root}/c1000/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    print(f"create1000={ms(t, 1000):.3f}")
    sys.exit(0)
if create:
    for n in (1000, 10000):
        d = f"{root}/d{n}"
        os.mkdir(d)
        t = time.perf_counter()
        for i in range(n):
            os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        out[f"create{n}"] = ms(t, n)
d, n = f"{root}/d10000", 10000
t = time.perf_counter()
for i in range(n):
    os.stat(f"{d}/f{i}")
out["stat"] = ms(t, n)
fds = [os.open(f"{root}/d1000/f{i}", os.O_RDONLY) for i in range(1000)]
t = time.perf_counter()
for _ in range(5):
    for fd in fds:
        os.fstat(fd)
out["getattr"] = ms(t, 5000)
for fd in fds:
    os.close(fd)
for n in (1000, 10000):
    t = time.perf_counter()
    names = os.listdir(f"{root}/d{n}")
    out[f"readdir{n}"] = ms(t, 1)
    assert len(names) == n
print(" ".join(f"{k}={v:.3f}" for k, v in sorted(out.items())))
PY
}

declare -A R
mount_with "meta_cache=off"
R[create]=$(pass create)
R[nocache]=$(pass read)
unmount; drop_local_cache
mount_with "meta_cache=on"
R[createcached]=$(pass create-cached)
R[cold]=$(pass read)
R[warm]=$(pass read)
sleep 65  # past the change log's replay margin (a minute): the creates are not replayed
mount_with "meta_cache=on"
R[remount]=$(pass read)

get() { # row key → value
  tr ' ' '\n' <<<"${R[$1]}" | awk -F= -v k="$2" '$1 == k {print $2}'
}
echo "| ms per operation | no local cache | cache cold | cache warm | cache after remount | JuiceFS + PostgreSQL (published) |"
echo "|---|---|---|---|---|---|"
echo "| create (1,000 files; 10,000 files) | $(get create create1000); $(get create create10000) | $(get createcached create1000) (1,000 files) | | | 0.84 |"
echo "| stat of a path (lookup + getattr), 10,000 files | $(get nocache stat) | $(get cold stat) | $(get warm stat) | $(get remount stat) | |"
echo "| getattr (fstat of an open file) | $(get nocache getattr) | $(get cold getattr) | $(get warm getattr) | $(get remount getattr) | 0.35 |"
echo "| readdir of 1,000 entries | $(get nocache readdir1000) | $(get cold readdir1000) | $(get warm readdir1000) | $(get remount readdir1000) | 18 |"
echo "| readdir of 10,000 entries | $(get nocache readdir10000) | $(get cold readdir10000) | $(get warm readdir10000) | $(get remount readdir10000) | |"
