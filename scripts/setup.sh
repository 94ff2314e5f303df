#!/usr/bin/env bash
# Installs the system packages Graviton needs to build, mount and be tested on a fresh Debian
# machine (idempotent: installs only what is missing).
set -euo pipefail
packages=(fuse3 libfuse3-dev pkg-config clang libclang-dev fio rsync git sqlite3 tar postgresql python3 attr)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
