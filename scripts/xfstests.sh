#!/usr/bin/env bash
# Runs xfstests (fstests) against Graviton, as root.
# usage: scripts/xfstests.sh [CHECK ARGUMENTS…]      (default: -g quick)
#   scripts/xfstests.sh generic/355 generic/683      a list of tests
#   scripts/xfstests.sh -g quick -e generic/475      anything ./check takes
# Environment:
#   GRAVITON_BIN       the graviton binary (default: release/graviton in the build folder that
#                      scripts/env.sh names; nothing is built here)
#   XFSTESTS_ARCHIVE   xfstests source archive (default ../shared/tools/xfstests/xfstests-*.tar.gz)
#   XFSTESTS_SRC       an xfstests checkout to use instead of the archive (copied, not changed)
#   XFSTESTS_WORK      work folder (default /var/tmp/graviton-xfstests): the built xfstests,
#                      the volumes, the mountpoints and results/<date>/ of each run
#   XFSTESTS_MOUNT_OPTIONS  mount options (default allow_other,default_permissions)
#   XFSTESTS_GRAVITON_OPTIONS  options every Graviton mount starts from, before mount(8)'s
#                      (default `dev,suid`, which tests of device files and setuid need:
#                      mount(8) never passes a helper those, its defaults; Graviton's own
#                      defaults stay nodev,nosuid)
#   XFSTESTS_TIMEOUT   seconds a test may run before the watchdog ends it (default 300)
#   XFSTESTS_VOLUME    the kind of the test and scratch volumes:
#                      embedded      (default) folders under the work folder
#                      postgres      metadata and blocks in databases of the test PostgreSQL
#                                    server (scripts/pg.sh starts it)
#                      postgres-s3   metadata there, blocks in the test S3 server
#                                    (scripts/s3.sh; scripts/test.sh installs it)
#   XFSTESTS_FS=ext4   the same run on ext4 on two loop devices instead, for comparison
# The test volume (TEST_DEV) and the scratch volume (SCRATCH_DEV) are formatted afresh for each
# run; a test's _scratch_mkfs formats the scratch volume again. Mounts go through
# /sbin/mount.fuse.graviton, installed here.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd -P)
here="$repo/scripts/xfstests"
[ "$(id -u)" = 0 ] || { echo "xfstests.sh: run as root" >&2; exit 1; }

WORK=${XFSTESTS_WORK:-/var/tmp/graviton-xfstests}
FS=${XFSTESTS_FS:-graviton}
# the build folder as scripts/env.sh names it (env.sh itself may clean a build: not sourced)
target_dir=${CARGO_TARGET_DIR:-/var/cache/graviton/target}
export GRAVITON_BIN=${GRAVITON_BIN:-$target_dir/release/graviton}
if [ "$FS" = graviton ]; then
  [ -x "$GRAVITON_BIN" ] || {
    echo "xfstests.sh: no graviton binary at $GRAVITON_BIN (cargo build --release, or set GRAVITON_BIN)" >&2
    exit 1
  }
  GRAVITON_BIN=$(realpath "$GRAVITON_BIN")
fi
VOLUME=${XFSTESTS_VOLUME:-embedded}
case $VOLUME in
  embedded) ;;
  postgres) source "$repo/scripts/pg.sh" ;;
  postgres-s3) source "$repo/scripts/pg.sh"; source "$repo/scripts/s3.sh" ;;
  *) echo "xfstests.sh: XFSTESTS_VOLUME is embedded, postgres or postgres-s3" >&2; exit 1 ;;
esac
TIMEOUT=${XFSTESTS_TIMEOUT:-300}
MOUNT_OPTS=${XFSTESTS_MOUNT_OPTIONS:-allow_other,default_permissions}
[ $# -gt 0 ] || set -- -g quick
mkdir -p "$WORK"

log() { echo "xfstests.sh: $*" >&2; }

install_packages() { # the Debian packages xfstests' README lists, and fuse3
  local pkgs=(acl attr automake bc dbench dump e2fsprogs fio gawk gcc git indent libacl1-dev
    libaio-dev libcap-dev libgdbm-dev libtool libtool-bin liburing-dev lvm2 make psmisc python3
    quota sed uuid-dev uuid-runtime xfsprogs xfslibs-dev sqlite3 fuse3)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

create_users() { # the users and group many tests switch to
  getent group fsgqa >/dev/null || groupadd fsgqa
  id fsgqa >/dev/null 2>&1 || useradd -m -g fsgqa fsgqa
  local u
  for u in fsgqa2 123456-fsgqa; do
    id "$u" >/dev/null 2>&1 || useradd -m "$u"
  done
}

# xfstests, unpacked (or copied) into $WORK/xfstests and built once per source
build_xfstests() {
  local src=$WORK/xfstests stamp
  if [ -n "${XFSTESTS_SRC:-}" ]; then
    stamp="checkout $(realpath "$XFSTESTS_SRC") $(git -C "$XFSTESTS_SRC" rev-parse HEAD 2>/dev/null || true)"
  else
    local archive=${XFSTESTS_ARCHIVE:-}
    if [ -z "$archive" ]; then
      archive=$(ls "$repo"/../shared/tools/xfstests/xfstests-*.tar.gz 2>/dev/null | tail -1)
    fi
    [ -f "$archive" ] || { log "no xfstests archive (set XFSTESTS_ARCHIVE or XFSTESTS_SRC)"; exit 1; }
    stamp="archive $(sha256sum < "$archive" | cut -d' ' -f1)"
  fi
  stamp="$stamp patch $(sha256sum < "$here/common-rc.patch" | cut -d' ' -f1)"
  if [ "$(cat "$WORK/xfstests.built" 2>/dev/null)" = "$stamp" ] && [ -x "$src/check" ]; then
    return
  fi
  log "building xfstests in $src (a few minutes)"
  rm -rf "$src" "$WORK/xfstests.built"
  if [ -n "${XFSTESTS_SRC:-}" ]; then
    cp -a "$XFSTESTS_SRC" "$src"
  else
    local tmp; tmp=$(mktemp -d "$WORK/unpack.XXXXXX")
    tar xzf "$archive" -C "$tmp"
    mv "$tmp"/* "$src" && rmdir "$tmp"
  fi
  # _fs_type: a mounted fuse.graviton is FSTYP fuse; _scratch_mkfs: runs $FUSE_MKFS_PROG
  patch -d "$src" -p1 --forward --quiet < "$here/common-rc.patch"
  make -C "$src" -j"$(nproc)" > "$WORK/xfstests-build.log" 2>&1 ||
    { tail -20 "$WORK/xfstests-build.log"; log "xfstests build failed ($WORK/xfstests-build.log)"; exit 1; }
  echo "$stamp" > "$WORK/xfstests.built"
}

# The helpers go to $WORK/bin (self-contained: the checkout may move); mount(8) finds
# /sbin/mount.fuse.graviton, a stub that names the binary and runs the helper there. The
# installed helper it replaces (scripts/install.sh) is put back when the run ends.
# Runs with different work folders may go on at once (one per volume kind): each registers in
# $RUNS, and only the last to end puts the installed helper back; the stub any of them wrote
# serves them all (the helpers are the same).
RUNS=/run/graviton-xfstests
others_running() {
  local f
  for f in "$RUNS"/*; do
    [ -e "$f" ] && [ "${f##*/}" != $$ ] && kill -0 "${f##*/}" 2>/dev/null && return 0
  done
  return 1
}
install_helpers() {
  mkdir -p "$WORK/bin" "$RUNS"
  touch "$RUNS/$$"
  if [ -e /sbin/mount.fuse.graviton ] && ! grep -q "installed by scripts/xfstests.sh" /sbin/mount.fuse.graviton; then
    cp -p /sbin/mount.fuse.graviton "$RUNS/mount.fuse.graviton.installed"
  fi
  install -m 0755 "$repo/mount-helpers/mount.graviton" "$here/mount.fuse.graviton" \
    "$here/umount" "$here/mkfs.graviton" "$WORK/bin/"
  if others_running && grep -qs "installed by scripts/xfstests.sh" /sbin/mount.fuse.graviton; then
    return
  fi
  cat > /sbin/mount.fuse.graviton.new <<EOF
#!/bin/sh
# xfstests' mount helper for Graviton (installed by scripts/xfstests.sh)
export GRAVITON_BIN=$GRAVITON_BIN
export GRAVITON_OPTIONS=${XFSTESTS_GRAVITON_OPTIONS-dev,suid}
exec $WORK/bin/mount.fuse.graviton "\$@"
EOF
  chmod 0755 /sbin/mount.fuse.graviton.new
  mv /sbin/mount.fuse.graviton.new /sbin/mount.fuse.graviton
}

daemon_gone() { # pid: exited, or a zombie whose threads have all ended
  [ ! -e "/proc/$1" ] || { [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ] &&
    [ "$(ls "/proc/$1/task" 2>/dev/null | wc -l)" -le 1 ]; }
}

our_mounts() { # TARGET MAJ:MIN of every mount of our volumes or under our mountpoints, last first
  findmnt -rn -o SOURCE,TARGET,MAJ:MIN | awk -v w="$WORK/" \
    -v db="graviton_xfs_${VOLUME//-/_}_" \
    'index($1, w "vol/") == 1 || $1 ~ ("/" db "(test|scratch)$") || index($2, w "mnt/") == 1 { print $2, $3 }' | tac
}

# Unmounts everything of ours (a hung FUSE connection first aborted) and waits for the daemons
# that served them; one that has not exited 30 s later is killed.
release_mounts() {
  local mp majmin vol pid daemons=()
  for vol in "$WORK"/vol/*; do  # the daemons now running, not those a later mount starts
    pid=$(cat "$vol/graviton.pid" 2>/dev/null) || continue
    [ -n "$pid" ] && grep -qs graviton "/proc/$pid/cmdline" && daemons+=("$pid")
  done
  if [ "$FS" = graviton ]; then  # those of PostgreSQL volumes keep their pid elsewhere
    while read -r mp majmin; do
      pid=$(timeout 10 "$GRAVITON_BIN" daemon-pid "$(printf '%b' "$mp")" 2>/dev/null) || continue
      [ -n "$pid" ] && daemons+=("$pid")
    done < <(our_mounts)
  fi
  if [ "$FS" = graviton ]; then
    mountpoint -q /sys/fs/fuse/connections || mount -t fusectl fusectl /sys/fs/fuse/connections || true
  fi
  our_mounts | while read -r mp majmin; do
    mp=$(printf '%b' "$mp")
    if [ "$FS" = graviton ] && ! timeout 10 stat -t "$mp" >/dev/null 2>&1; then
      log "aborting the hung FUSE connection of $mp"
      echo 1 > "/sys/fs/fuse/connections/${majmin#*:}/abort" 2>/dev/null || true
    fi
    timeout 60 umount -i "$mp" 2>/dev/null || umount -i -l "$mp" 2>/dev/null || true
  done
  for pid in "${daemons[@]}"; do
    for _ in $(seq 1 300); do daemon_gone "$pid" && break; sleep 0.1; done
    daemon_gone "$pid" || { log "killing daemon $pid"; kill -KILL "$pid" 2>/dev/null || true; }
  done
}

descendants() { # pid → its descendants' pids
  ps -eo pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END { for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q]
                              if (q == root && p != root) print p } }'
}

# Beside ./check (pid $1): a test running longer than $TIMEOUT seconds has the FUSE connections
# of our mounts aborted (a process stuck in a FUSE request then returns), is killed with all
# its processes, and our mounts are detached; check records the test as failed and goes on.
watchdog() {
  set +e
  local check=$1 pid etimes name
  while kill -0 "$check" 2>/dev/null; do
    sleep 5
    for pid in $(descendants "$check"); do
      read -r etimes name < <(ps -o etimes=,args= -p "$pid" 2>/dev/null |
        awk '{ for (i = 2; i <= NF; i++) if ($i ~ /(^|\/)tests\/[a-z0-9]+\/[0-9]+$/) print $1, $i }') || continue
      [ -n "${etimes:-}" ] && [ "$etimes" -gt "$TIMEOUT" ] || continue
      log "watchdog: ${name##*tests/} has run ${etimes}s: aborting it" 2>&1 | tee -a "$results/watchdog.log" >&2
      local victims; victims="$pid $(descendants "$pid")"
      if [ "$FS" = graviton ]; then
        our_mounts | while read -r _ majmin; do
          echo 1 > "/sys/fs/fuse/connections/${majmin#*:}/abort" 2>/dev/null || true
        done
      fi
      kill -TERM $victims 2>/dev/null || true
      sleep 5
      kill -KILL $victims 2>/dev/null || true
      release_mounts
    done
  done
}

# two 4 GiB loop devices under $WORK/ext4, for XFSTESTS_FS=ext4
loops=()
setup_ext4() {
  mkdir -p "$WORK/ext4"
  local name
  for name in test scratch; do
    truncate -s 4G "$WORK/ext4/$name.img"
    loops+=("$(losetup -f --show "$WORK/ext4/$name.img")")
  done
  mkfs.ext4 -q -F "${loops[0]}"
  TEST_DEV=${loops[0]} SCRATCH_DEV=${loops[1]}
}

cleanup() {
  [ -n "${watchdog_pid:-}" ] && kill "$watchdog_pid" 2>/dev/null || true
  release_mounts
  local l
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -f "$RUNS/$$"
  others_running && return
  if [ -e "$RUNS/mount.fuse.graviton.installed" ]; then
    mv "$RUNS/mount.fuse.graviton.installed" /sbin/mount.fuse.graviton
  elif grep -qs "installed by scripts/xfstests.sh" /sbin/mount.fuse.graviton; then
    rm -f /sbin/mount.fuse.graviton
  fi
}

install_packages
create_users
build_xfstests
XFS=$WORK/xfstests
TEST_DIR=$WORK/mnt/test SCRATCH_MNT=$WORK/mnt/scratch
trap cleanup EXIT
release_mounts
mkdir -p "$TEST_DIR" "$SCRATCH_MNT"

if [ "$FS" = ext4 ]; then
  setup_ext4
  config="export FSTYP=ext4
export TEST_DEV=$TEST_DEV
export SCRATCH_DEV=$SCRATCH_DEV"
else
  install_helpers
  case $VOLUME in
    embedded) TEST_DEV=$WORK/vol/test SCRATCH_DEV=$WORK/vol/scratch ;;
    *) TEST_DEV=${GRAVITON_TEST_PG%/*}/graviton_xfs_${VOLUME//-/_}_test
       SCRATCH_DEV=${GRAVITON_TEST_PG%/*}/graviton_xfs_${VOLUME//-/_}_scratch ;;
  esac
  # blocks of a PostgreSQL volume: in its database, or under a prefix of the S3 server's
  # bucket named after the database (mkfs.graviton)
  export GRAVITON_XFSTESTS_S3=
  [ "$VOLUME" = postgres-s3 ] && GRAVITON_XFSTESTS_S3=$GRAVITON_TEST_S3
  mkdir -p "$WORK/vol"
  "$WORK/bin/mkfs.graviton" "$TEST_DEV" >/dev/null
  "$WORK/bin/mkfs.graviton" "$SCRATCH_DEV" >/dev/null
  config="export FSTYP=fuse
export FUSE_SUBTYP=.graviton
export TEST_DEV=$TEST_DEV
export SCRATCH_DEV=$SCRATCH_DEV
export MOUNT_OPTIONS=\"-o $MOUNT_OPTS\"
export TEST_FS_MOUNT_OPTS=\"-o $MOUNT_OPTS\"
# umount by device: a volume directory is mapped to its mountpoint
export UMOUNT_PROG=$WORK/bin/umount
# _scratch_mkfs formats the scratch volume afresh (common-rc.patch)
export FUSE_MKFS_PROG=$WORK/bin/mkfs.graviton
export GRAVITON_BIN=$GRAVITON_BIN
export GRAVITON_XFSTESTS_S3=\"$GRAVITON_XFSTESTS_S3\"
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-} AWS_REGION=${AWS_REGION:-}
# every Graviton mount starts from: ${XFSTESTS_GRAVITON_OPTIONS-dev,suid}"
fi
kind=$FS
[ "$FS" = graviton ] && kind=$VOLUME
results=$WORK/results/$kind-$(date +%Y%m%d-%H%M%S)
mkdir -p "$results"
cat > "$XFS/local.config" <<EOF
# written by scripts/xfstests.sh
$config
export TEST_DIR=$TEST_DIR
export SCRATCH_MNT=$SCRATCH_MNT
export RESULT_BASE=$results
EOF
cp "$XFS/local.config" "$results/local.config"
ln -sfn "$(basename "$results")" "$WORK/results/latest"

log "running ./check $* on $FS (results in $results)"
set +e
(cd "$XFS" && exec ./check "$@") > >(tee "$results/check.out") 2>&1 &
check_pid=$!
watchdog "$check_pid" &
watchdog_pid=$!
wait "$check_pid"
sleep 1  # tee's last lines
set -e

# summary: the lines check ends with, and one count line
out=$results/check.out
ran=$(sed -n 's/^Ran: //p' "$out" | tail -1 | wc -w)
failed=$(sed -n 's/^Failures: //p' "$out" | tail -1 | wc -w)
notrun=$(sed -n 's/^Not run: //p' "$out" | tail -1 | wc -w)
echo
echo "results: $results"
grep -E '^(Ran|Not run|Failures):' "$out" | tail -3 || true
# (check's "Ran:" list includes the tests that were not run)
echo "$((ran - failed - notrun)) passed, $failed failed, $notrun skipped"
[ "$failed" -eq 0 ]
