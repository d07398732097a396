#!/usr/bin/env bash
# Builds the tools the tests need that no distribution package provides, once per version, under
# the cache directory:
#   vhost-device-vsock (rust-vmm): the vsock device of the test that boots a real guest through
#   ztee's Firecracker backend on hosts whose KVM cannot (crates/ztee-vm/tests/firecracker_on_qemu.rs).
set -euo pipefail
cache=${ZTEE_CACHE_DIR:-$HOME/.cache/ztee}
version=0.3.0
root="$cache/tools/vhost-device-vsock-$version"
if [[ ! -x "$root/bin/vhost-device-vsock" ]]; then
  echo "building vhost-device-vsock $version into $root (once, about a minute)" >&2
  # Its own target directory, not the workspace's.
  env -u CARGO_TARGET_DIR cargo install --locked --quiet vhost-device-vsock --version "$version" --root "$root"
fi
