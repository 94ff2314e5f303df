# Sourced by the scripts: one build directory outside the clone, reused by every run
# (RocksDB's C++ compiles once for tests, binaries and benchmarks: everything uses --release).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/graviton/target}"
mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null || export CARGO_TARGET_DIR="${HOME:-/tmp}/.cache/graviton/target"
export GRAVITON_BIN="$CARGO_TARGET_DIR/release/graviton"
# Cargo keys this project's own build by package, not by folder: a build from another checkout
# in the same target folder passes for this one's, and its binaries would be run. When the
# checkout changes, the project's own artifacts (not its dependencies) are built afresh.
_graviton_stamp="$CARGO_TARGET_DIR/.graviton-checkout"
if [ "$(cat "$_graviton_stamp" 2>/dev/null)" != "$(pwd -P)" ]; then
  cargo clean --release -p graviton --target-dir "$CARGO_TARGET_DIR" >/dev/null 2>&1 || true
  pwd -P > "$_graviton_stamp"
fi
