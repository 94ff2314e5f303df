#!/usr/bin/env bash
# Installs Graviton (scripts/install.sh) and mounts the default embedded volume on MOUNTPOINT.
# usage: scripts/mount.sh MOUNTPOINT [graviton mount options, e.g. -o allow_other]
set -euo pipefail
mp="${1:?usage: scripts/mount.sh MOUNTPOINT [-o OPTIONS]}"
shift
cd "$(dirname "$0")/.."
scripts/install.sh
mkdir -p "$mp"
"${PREFIX:-/usr/local}/bin/graviton" mount "$mp" "$@"
echo "mounted the default volume on $mp (unmount with: umount $mp)"
