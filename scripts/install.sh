#!/usr/bin/env bash
# Installs Graviton on this machine: builds it (release) and puts `graviton` in
# $PREFIX/bin (default /usr/local/bin), and the mount helpers where mount(8) and umount(8)
# look (/sbin: mount.graviton and mount.fuse.graviton, so that an fstab line may give the
# type `graviton` or `fuse.graviton`, and their umount helpers). Installing takes root (sudo).
# usage: scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo build --release --locked --bin graviton
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
$sudo install -D -m 0755 "$GRAVITON_BIN" "${PREFIX:-/usr/local}/bin/graviton"
$sudo sh mount-helpers/install.sh
echo "installed ${PREFIX:-/usr/local}/bin/graviton and the mount helpers in /sbin"
