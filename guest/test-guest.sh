#!/usr/bin/env bash
# End-to-end check of the guest assets: boots the ztee kernel under QEMU microvm (TCG) with the
# default rootfs attached read-only as a virtio-blk disk, and runs python3 from it as uid 1000.
#
#   guest/test-guest.sh          # exit 0 and "1 passed, 0 failed" when the guest works
#
# It builds the kernel and rootfs first when they are not cached (guest/build-kernel.sh and
# guest/build-rootfs.sh; about 10 minutes on 2 cores, root needed for the rootfs); with both
# cached the boot itself takes a few seconds. The guest's init (guest/initramfs/init.c) mounts
# /dev/vda read-only, chroots into it, drops to uid/gid 1000 and runs a shell command (ZTEE_RUN)
# that prints the python3 version, the user name, the OpenSSL version python links against, and
# whether the root filesystem refused a write to the world-writable /tmp. Every line is asserted.
set -euo pipefail
# shellcheck disable=SC2034 # read by ztee_die in lib.sh
ZTEE_SCRIPT_NAME=test-guest
guest_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$guest_dir/lib.sh"

for tool in qemu-system-x86_64 gcc python3 timeout; do
  command -v "$tool" >/dev/null || ztee_die "'$tool' is missing; run scripts/install-deps.sh"
done

kernel_dir=$("$guest_dir/build-kernel.sh" | tail -n1)
rootfs_dir=$("$guest_dir/build-rootfs.sh" | tail -n1)
rootfs="$rootfs_dir/rootfs.erofs"
[[ -f $rootfs ]] || ztee_die "no rootfs.erofs in $rootfs_dir"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ztee_build_init "$work/init"
ztee_make_initramfs "$work/initrd.gz" /init="$work/init"

# init runs ZTEE_RUN with /bin/sh -c; the kernel keeps a double-quoted value together, so the
# command itself uses single quotes only.
guest_command='python3 --version; id -un; python3 -c "import ssl; print(ssl.OPENSSL_VERSION)"; if touch /tmp/written 2>/dev/null; then echo rootfs-writable; else echo rootfs-read-only; fi'
guest_command=${guest_command//\"/\'}
mapfile -t base < <(ztee_qemu_base_args microvm,acpi=off)
started=$EPOCHREALTIME
set +e
timeout 60 qemu-system-x86_64 "${base[@]}" \
  -kernel "$kernel_dir/vmlinux" -initrd "$work/initrd.gz" \
  -append "$(ztee_kernel_cmdline) ZTEE_RUN=\"$guest_command\"" \
  -drive "id=rootfs,file=$rootfs,format=raw,if=none,readonly=on" -device virtio-blk-device,drive=rootfs \
  -device virtio-rng-device \
  >"$work/console.log" 2>&1
qemu_status=$?
set -e
elapsed=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
tr -d '\r' <"$work/console.log" >"$work/console.txt"

failures=()
expect() {
  local description=$1 pattern=$2
  grep -Eq "$pattern" "$work/console.txt" || failures+=("$description (no line matching /$pattern/)")
}
((qemu_status == 0)) || failures+=("QEMU exited with status $qemu_status (124 means the 60 s timeout)")
expect "init reached" '^ZTEE-GUEST-READY uptime=[0-9.]+$'
expect "python3 runs from the rootfs" '^Python 3\.[0-9]+\.[0-9]+$'
expect "command runs as the unprivileged user" '^user$'
expect "python3 loads its ssl module" '^OpenSSL 3\.'
expect "the rootfs is read-only" '^rootfs-read-only$'
expect "the command exits 0" '^ZTEE-EXIT 0$'

echo "guest console (kernel $(cat "$kernel_dir/version"), rootfs $(cut -c1-12 "$rootfs_dir/rootfs.sha256"), ${elapsed} s):"
sed 's/^/  | /' "$work/console.txt"
if ((${#failures[@]})); then
  printf 'FAILED: %s\n' "${failures[@]}" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
echo "guest boots and runs python3 from the read-only rootfs"
echo "1 passed, 0 failed"
