#!/usr/bin/env bash
# Builds (or reuses from the cache) the three guest assets and installs them where ztee looks:
#
#   scripts/guest.sh                 # -> ${ZTEE_GUEST_DIR:-$DATA_DIR/guest}/{vmlinux,rootfs.img,ztee-agent}
#
# The kernel and root file system are cached by their inputs under ${ZTEE_CACHE_DIR:-~/.cache/ztee}
# (see guest/build-kernel.sh and guest/build-rootfs.sh); the agent is built by cargo (static, into
# $CARGO_TARGET_DIR). The guest directory only holds symlinks to those artifacts.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data_dir="${ZTEE_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/ztee}"
guest_dir="${ZTEE_GUEST_DIR:-$data_dir/guest}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
triple=x86_64-unknown-linux-gnu

echo "guest: kernel" >&2
kernel_dir=$("$repo/guest/build-kernel.sh" | tail -n1)
echo "guest: root file system" >&2
rootfs_dir=$("$repo/guest/build-rootfs.sh" | tail -n1)
echo "guest: agent (static)" >&2
# RUSTFLAGS with an explicit --target apply to the agent only, not to build scripts.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --locked -p ztee-agent \
  --profile agent --target "$triple" --manifest-path "$repo/Cargo.toml" --target-dir "$target_dir"
agent="$target_dir/$triple/agent/ztee-agent"

rootfs=$(find "$rootfs_dir" -maxdepth 1 -name 'rootfs.erofs' -o -maxdepth 1 -name 'rootfs.ext4' | head -n1)
[[ -n $rootfs ]] || { echo "guest: error: no root file system image in $rootfs_dir" >&2; exit 1; }

mkdir -p "$guest_dir"
ln -sfn "$kernel_dir/vmlinux" "$guest_dir/vmlinux"
ln -sfn "$rootfs" "$guest_dir/rootfs.img"
ln -sfn "$agent" "$guest_dir/ztee-agent"
echo "$guest_dir"
