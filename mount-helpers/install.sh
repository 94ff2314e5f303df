#!/bin/sh
# Puts the mount helpers where mount(8) and umount(8) look: /sbin/mount.graviton and
# /sbin/mount.fuse.graviton (an fstab line may give the type `graviton` or `fuse.graviton`),
# /sbin/umount.graviton and /sbin/umount.fuse.graviton (a Graviton mount shows as
# fuse.graviton in /proc/mounts). Run as root; scripts/install.sh also installs the binary.
set -eu
here=$(dirname "$0")
install -m 0755 "$here/mount.graviton" /sbin/mount.graviton
install -m 0755 "$here/mount.graviton" /sbin/mount.fuse.graviton
install -m 0755 "$here/umount.graviton" /sbin/umount.graviton
install -m 0755 "$here/umount.graviton" /sbin/umount.fuse.graviton
