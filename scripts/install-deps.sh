#!/usr/bin/env bash
# Installs the host packages ztee needs to build its guest and run its tests (Debian/Ubuntu).
# Idempotent: packages already present are not reinstalled, and apt is only asked when one is missing.
set -euo pipefail

packages=(
  # gateway OIDC tests: a real OpenID Provider (npm oidc-provider) runs on Node.js 20+ with npm
  nodejs
  # microVMs
  qemu-system-x86
  # guest kernel build
  linux-source bc bison flex libelf-dev libssl-dev xz-utils cpio
  # root filesystem build
  debootstrap erofs-utils e2fsprogs
  # guest kernel compiler, and the static test init of guest/test-guest.sh and guest/measure
  gcc make libc6-dev binutils python3
  # supply chain: a real registry and a real client for interoperability tests
  docker-registry skopeo
  # supply chain tests: OpenSSL checks signatures independently; spdx-tools (PyPI) runs in a venv
  openssl python3-venv
  # supply chain tests: sigstore-rs (dev-dependency) links OpenSSL through openssl-sys
  pkg-config
)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
