#!/usr/bin/env bash
# Compares the ztee microVM kernel with Debian's cloud kernel, booted the way ztee boots guests.
#
#   guest/measure/boot-bench.sh               # 10 boots of each, prints a table
#   guest/measure/boot-bench.sh --boots 20
#
# Candidates (each boot attaches the same virtio-mmio devices: a virtio-blk disk, a virtio-rng and
# a virtio-serial port, the agent's channel under QEMU):
#   ztee vmlinux (PVH)   guest/build-kernel.sh output, uncompressed ELF booted through its PVH entry
#                        (how QEMU and Firecracker boot it)
#   ztee vmlinux, mitigations=off
#                        the same, with the speculative-execution mitigations switched off on the
#                        kernel command line: what they cost under TCG
#   ztee bzImage         the same kernel, compressed, booted through the Linux boot protocol
#   debian cloud         linux-image-cloud-amd64 from the Debian archive: its bzImage plus an
#                        initramfs with the modules for virtio-mmio, virtio-blk, virtio-console,
#                        virtio-rng and erofs, which init loads before printing the marker. The distribution kernel
#                        has no virtio-mmio command-line discovery, so this candidate boots with
#                        microvm's ACPI tables on.
# Every candidate runs the same static init (guest/initramfs/init.c), which prints
# "ZTEE-GUEST-READY uptime=<guest seconds>" and reboots; `reboot=t` with -no-reboot ends QEMU.
# Boots are interleaved (a, b, c, a, b, c, ...) so load from other work on the host spreads evenly.
#
# Columns: boot-to-marker is host wall time from starting QEMU to the marker line on the serial
# console (median, min-max); guest uptime is the guest's own /proc/uptime at the marker; size is
# what QEMU loads (kernel, plus the module initramfs for the cloud kernel); setup is the time to
# build the kernel (from the build's own record) or to download and unpack the package and pack its
# modules (measured in this run).
set -euo pipefail
# shellcheck disable=SC2034 # read by ztee_die in lib.sh
ZTEE_SCRIPT_NAME=boot-bench
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
guest_dir=$(dirname "$here")
# shellcheck source-path=SCRIPTDIR/..
source "$guest_dir/lib.sh"

boots=10
while (($#)); do
  case $1 in
    --boots)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || ztee_die "--boots needs a positive whole number, got '${2:-}'"
      ((${2} <= 100)) || ztee_die "--boots is capped at 100 (got $2)"
      boots=$2
      shift 2
      ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) ztee_die "unknown argument '$1' (accepted: --boots N, --help)" ;;
  esac
done
for tool in qemu-system-x86_64 apt-get apt-cache dpkg-deb gcc python3 timeout; do
  command -v "$tool" >/dev/null || ztee_die "'$tool' is missing; run scripts/install-deps.sh"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status() { echo "boot-bench: $*" >&2; }

status "building (or reusing) the ztee kernel"
kernel_dir=$("$guest_dir/build-kernel.sh" | tail -n1)
ztee_build_init "$work/init"
ztee_make_initramfs "$work/initrd-plain.gz" /init="$work/init"

status "fetching and unpacking Debian's cloud kernel"
setup_start=$EPOCHREALTIME
cloud_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[[ -n $cloud_pkg ]] || ztee_die "apt cannot resolve linux-image-cloud-amd64; run 'apt-get update' first"
mkdir "$work/cloud"
(cd "$work/cloud" && apt-get download -q "$cloud_pkg" >/dev/null 2>"$work/cloud/download.log") ||
  ztee_die "apt-get download $cloud_pkg failed: $(tail -n1 "$work/cloud/download.log")"
dpkg-deb -x "$work"/cloud/*.deb "$work/cloud/root"
cloud_kernel=$(find "$work/cloud/root/boot" -name 'vmlinuz-*' | head -n1)
cloud_release=${cloud_kernel##*/vmlinuz-}
moddir="$work/cloud/root/lib/modules/$cloud_release/kernel"

# Module load order: every module after the modules it depends on (from each module's modinfo).
declare -A loaded=()
order=()
# Module names use '_' where some file names use '-' (virtio_rng is virtio-rng.ko).
module_path() { find "$moddir" \( -name "$1.ko" -o -name "${1//_/-}.ko" \) | head -n1; }
add_module() {
  local name=$1 path deps dep
  [[ -n ${loaded[$name]:-} ]] && return
  path=$(module_path "$name")
  [[ -n $path ]] || ztee_die "module $name not found in $cloud_pkg"
  deps=$(strings -a "$path" | sed -n 's/^depends=//p' | head -n1)
  for dep in ${deps//,/ }; do add_module "$dep"; done
  loaded[$name]=1
  order+=("$name")
}
for m in virtio_mmio virtio_blk virtio_console virtio_rng erofs; do add_module "$m"; done
cpio_args=(/init="$work/init")
for m in "${order[@]}"; do
  cpio_args+=("/modules/$m.ko=$(module_path "$m")")
  echo "/modules/$m.ko" >>"$work/cloud/modules.order"
done
cpio_args+=(/modules.order="$work/cloud/modules.order")
ztee_make_initramfs "$work/initrd-cloud.gz" "${cpio_args[@]}"
cloud_setup=$(awk -v a="$setup_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s (download + unpack)", b - a }')
status "cloud kernel $cloud_pkg; modules in initramfs: ${order[*]}"

truncate -s 1M "$work/disk.img"
cmdline=$(ztee_kernel_cmdline)
# shellcheck disable=SC2054 # commas separate QEMU sub-options, not array elements
devices=(
  -drive "id=disk,file=$work/disk.img,format=raw,if=none,readonly=on" -device virtio-blk-device,drive=disk
  -device virtio-rng-device
  -device virtio-serial-device -chardev null,id=agent -device virtserialport,chardev=agent,name=ztee.agent
)

names=("ztee vmlinux (PVH)" "ztee vmlinux, no mitig." "ztee bzImage" "debian cloud")
machines=("microvm,acpi=off" "microvm,acpi=off" "microvm,acpi=off" "microvm,acpi=on")
kernels=("$kernel_dir/vmlinux" "$kernel_dir/vmlinux" "$kernel_dir/bzImage" "$cloud_kernel")
extra_cmdline=("" " mitigations=off" "" "")
initrds=("$work/initrd-plain.gz" "$work/initrd-plain.gz" "$work/initrd-plain.gz" "$work/initrd-cloud.gz")
sizes=(
  "$(stat -c %s "$kernel_dir/vmlinux")"
  "$(stat -c %s "$kernel_dir/vmlinux")"
  "$(stat -c %s "$kernel_dir/bzImage")"
  "$(($(stat -c %s "$cloud_kernel") + $(stat -c %s "$work/initrd-cloud.gz")))"
)
kernel_setup="$(cat "$kernel_dir/build-seconds" 2>/dev/null || echo '?') s (build)"
setups=("$kernel_setup" "$kernel_setup" "$kernel_setup" "$cloud_setup")

# One boot; prints "<host ms to marker> <guest uptime s>".
boot_once() {
  local i=$1 start line now ms='' uptime=''
  mapfile -t base < <(ztee_qemu_base_args "${machines[$i]}")
  start=$EPOCHREALTIME
  while IFS= read -r line; do
    line=${line%$'\r'}
    if [[ -z $ms && $line == ZTEE-GUEST-READY* ]]; then
      now=$EPOCHREALTIME
      ms=$(awk -v a="$start" -v b="$now" 'BEGIN { printf "%d", (b - a) * 1000 }')
      uptime=${line##*uptime=}
    fi
  done < <(timeout 120 qemu-system-x86_64 "${base[@]}" -kernel "${kernels[$i]}" -initrd "${initrds[$i]}" \
    -append "$cmdline${extra_cmdline[$i]}" "${devices[@]}" 2>&1)
  [[ -n $ms ]] || ztee_die "${names[$i]}: no ready marker within 120 s"
  echo "$ms $uptime"
}

declare -a results
for ((round = 1; round <= boots; round++)); do
  for i in "${!names[@]}"; do
    results[i]+="$(boot_once "$i")"$'\n'
  done
  status "round $round/$boots done"
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minmax() { sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }

printf '\nboots per kernel: %d; host: %s, %s cores, load average %s; qemu: %s\n\n' "$boots" \
  "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(nproc)" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$(qemu-system-x86_64 --version | head -n1)"
fmt='| %-24s | %-17s | %-15s | %-16s | %-8s | %-26s |\n'
# shellcheck disable=SC2059
printf "$fmt" kernel "boot-to-marker ms" "min-max ms" "guest uptime s" "size MiB" setup
# shellcheck disable=SC2059
printf "$fmt" "---" "---" "---" "---" "---" "---"
for i in "${!names[@]}"; do
  host_ms=$(printf '%s' "${results[$i]}" | awk 'NF { print $1 }')
  guest_s=$(printf '%s' "${results[$i]}" | awk 'NF { print $2 }')
  # shellcheck disable=SC2059
  printf "$fmt" "${names[$i]}" "$(median <<<"$host_ms")" "$(minmax <<<"$host_ms")" \
    "$(median <<<"$guest_s")" "$(awk -v s="${sizes[$i]}" 'BEGIN { printf "%.1f", s / 1048576 }')" "${setups[$i]}"
done
base_ms=$(printf '%s' "${results[0]}" | awk 'NF { print $1 }' | median)
cloud_ms=$(printf '%s' "${results[3]}" | awk 'NF { print $1 }' | median)
awk -v a="$cloud_ms" -v b="$base_ms" 'BEGIN { printf "\ndebian cloud / ztee vmlinux median boot-to-marker: %.2fx\n", a / b }'
