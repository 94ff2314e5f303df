#!/usr/bin/env bash
# Builds Graviton (once) and mounts the default embedded volume on MOUNTPOINT.
# usage: scripts/mount.sh MOUNTPOINT [graviton mount options, e.g. -o allow_other]
set -euo pipefail
mp="${1:?usage: scripts/mount.sh MOUNTPOINT [-o OPTIONS]}"
shift
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo build --release --locked --bin graviton
mkdir -p "$mp"
"$GRAVITON_BIN" mount "$mp" "$@"
echo "mounted the default volume on $mp (unmount with: umount $mp)"
