# Sourced by the scripts: one build directory outside the clone, reused by every run
# (RocksDB's C++ compiles once for tests, binaries and benchmarks: everything uses --release).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/graviton/target}"
mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null || export CARGO_TARGET_DIR="${HOME:-/tmp}/.cache/graviton/target"
export GRAVITON_BIN="$CARGO_TARGET_DIR/release/graviton"
