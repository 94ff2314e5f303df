#!/usr/bin/env bash
# The full test suite: installs what it needs, builds once, runs every test (the core's unit
# and property tests, real mounts with tar/cp/git/sqlite/rsync/mmap, crash safety, pjdfstest).
# usage: scripts/test.sh [extra nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

# pjdfstest (the POSIX conformance suite), pinned; built once into its own cache
if ! command -v pjdfstest >/dev/null; then
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/../pjdfstest-target" cargo install --quiet --locked pjdfstest --version 0.2.2
fi
# s3s-fs (an S3-compatible server for the S3 block store's tests), pinned
if ! command -v s3s-fs >/dev/null; then
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/../s3s-target" cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary
fi
# the users pjdfstest switches to
id nobody >/dev/null 2>&1 || useradd -r -s /usr/sbin/nologin nobody
id tests >/dev/null 2>&1 || echo 'tests:x:::pjdfstest dummy user:/:/usr/sbin/nologin' | newusers

# graviton in /usr/local/bin and the mount(8)/umount(8) helpers, as a user installs them
# (tests/fstab.rs mounts through them)
scripts/install.sh

# a PostgreSQL server on loopback for the PostgreSQL engine's tests (sets GRAVITON_TEST_PG)
source scripts/pg.sh
# an S3-compatible server on loopback (sets GRAVITON_TEST_S3 and test credentials)
source scripts/s3.sh
# a test that needs the servers fails when one is missing (a plain `cargo test` skips it)
export GRAVITON_TEST_SERVERS=required

# whatever happens, leave no test mount behind
cleanup() {
  local status=$? mp
  set +e
  for mp in $(awk '$2 ~ "^/tmp/graviton-" {print $2}' /proc/mounts); do
    fusermount3 -uz "$mp" 2>/dev/null
  done
  exit $status
}
trap cleanup EXIT

status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --no-fail-fast "$@" || status=$?
else
  cargo test --release --locked --no-fail-fast "$@" || status=$?
fi

# xfstests: the subset in scripts/xfstests/ci-tests (the tests that found bugs and a spread of
# the quick group) on an embedded and a PostgreSQL volume, whenever an xfstests source is at
# hand (../shared/tools/xfstests, XFSTESTS_ARCHIVE or XFSTESTS_SRC). The whole quick group on
# every volume kind: scripts/xfstests.sh (docs/conformance.md).
if [ $# -eq 0 ] && { [ -n "${XFSTESTS_ARCHIVE:-}${XFSTESTS_SRC:-}" ] ||
    ls ../shared/tools/xfstests/xfstests-*.tar.gz >/dev/null 2>&1; }; then
  mapfile -t xfstests < <(grep -v '^#' scripts/xfstests/ci-tests | tr ' ' '\n' | grep .)
  XFSTESTS_VOLUME=embedded scripts/xfstests.sh "${xfstests[@]}" || status=1
  XFSTESTS_VOLUME=postgres scripts/xfstests.sh "${xfstests[@]}" || status=1
fi
exit $status
