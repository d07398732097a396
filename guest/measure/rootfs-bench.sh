#!/usr/bin/env bash
# Compares read-only image formats for the default rootfs: erofs with lz4hc (what
# guest/build-rootfs.sh ships), erofs uncompressed, and ext4 without a journal.
#
#   sudo guest/measure/rootfs-bench.sh               # 5 boots per format, prints a table
#   sudo guest/measure/rootfs-bench.sh --boots 10
#
# Root is needed to loop-mount the cached image as the source tree of the other formats. Each boot
# runs the ztee kernel with the image as a read-only virtio-blk disk and runs, as uid 1000,
# `python3 -c "import ssl, json, asyncio, sqlite3"` from it: a cold start of python that reads
# a few MiB of libraries and modules, timed inside the guest with `date` so that QEMU start-up and
# kernel boot do not blur the read cost. Columns: image size, time to create the image, and that
# time (median, min-max). Boots are interleaved.
set -euo pipefail
# shellcheck disable=SC2034 # read by ztee_die in lib.sh
ZTEE_SCRIPT_NAME=rootfs-bench
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
guest_dir=$(dirname "$here")
# shellcheck source-path=SCRIPTDIR/..
source "$guest_dir/lib.sh"

boots=5
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
[[ $(id -u) -eq 0 ]] || ztee_die "must run as root (it loop-mounts the rootfs image)"
for tool in qemu-system-x86_64 mkfs.erofs mkfs.ext4 resize2fs gcc python3 timeout; do
  command -v "$tool" >/dev/null || ztee_die "'$tool' is missing; run scripts/install-deps.sh"
done
status() { echo "rootfs-bench: $*" >&2; }

kernel_dir=$("$guest_dir/build-kernel.sh" | tail -n1)
rootfs_dir=$("$guest_dir/build-rootfs.sh" | tail -n1)

work=$(mktemp -d)
tree="$work/tree"
mkdir "$tree"
cleanup() {
  mountpoint -q "$tree" && umount "$tree"
  rm -rf "$work"
}
trap cleanup EXIT
mount -o loop,ro -t erofs "$rootfs_dir/rootfs.erofs" "$tree" ||
  ztee_die "cannot loop-mount $rootfs_dir/rootfs.erofs (does the host kernel support erofs?)"
epoch=$(stat -c %Y "$tree/etc/passwd")

timed() { # timed SECONDS_VAR command...: runs the command, stores its wall time
  local var=$1 start
  shift
  start=$EPOCHREALTIME
  "$@" >"$work/mkfs.log" 2>&1 || { cat "$work/mkfs.log" >&2; ztee_die "'$*' failed"; }
  printf -v "$var" '%s' "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
}

status "creating images"
cp "$rootfs_dir/rootfs.erofs" "$work/lz4hc.erofs"
timed t_lz4hc mkfs.erofs -zlz4hc -T"$epoch" "$work/lz4hc-again.erofs" "$tree"
rm -f "$work/lz4hc-again.erofs"
timed t_plain mkfs.erofs -T"$epoch" "$work/plain.erofs" "$tree"
tree_kib=$(du -s --apparent-size -k "$tree" | cut -f1)
truncate -s "$(((tree_kib * 13 / 10 + 65536) / 1024))M" "$work/image.ext4"
make_ext4() {
  env E2FSPROGS_FAKE_TIME="$epoch" mkfs.ext4 -q -F -b 4096 -O ^has_journal -L rootfs -d "$tree" "$1" &&
    resize2fs -M "$1" # shrink the filesystem and the file to the minimum that holds the tree
}
timed t_ext4 make_ext4 "$work/image.ext4"

names=("erofs lz4hc (shipped)" "erofs uncompressed" "ext4, no journal")
images=("$work/lz4hc.erofs" "$work/plain.erofs" "$work/image.ext4")
types=(erofs erofs ext4)
mkfs_times=("$t_lz4hc" "$t_plain" "$t_ext4")

ztee_build_init "$work/init"
ztee_make_initramfs "$work/initrd.gz" /init="$work/init"
mapfile -t base < <(ztee_qemu_base_args microvm,acpi=off)
cmdline=$(ztee_kernel_cmdline)

# The guest times the import itself; the kernel keeps the double-quoted value in one piece.
# shellcheck disable=SC2016 # expanded by the guest's shell
guest_command='s=$(date +%s%N); python3 -c '"'"'import ssl, json, asyncio, sqlite3'"'"'; e=$(date +%s%N); echo ZTEE-MS $(((e - s) / 1000000))'

boot_once() { # prints the guest's milliseconds for the python3 import
  local i=$1 line ms='' exit_line=''
  while IFS= read -r line; do
    line=${line%$'\r'}
    [[ $line == ZTEE-MS\ * ]] && ms=${line#ZTEE-MS }
    [[ $line == ZTEE-EXIT* ]] && exit_line=$line
  done < <(timeout 120 qemu-system-x86_64 "${base[@]}" -kernel "$kernel_dir/vmlinux" -initrd "$work/initrd.gz" \
    -append "$cmdline ZTEE_ROOTFS_TYPE=${types[$i]} ZTEE_RUN=\"$guest_command\"" \
    -drive "id=rootfs,file=${images[$i]},format=raw,if=none,readonly=on" -device virtio-blk-device,drive=rootfs \
    -device virtio-rng-device 2>&1)
  [[ $exit_line == "ZTEE-EXIT 0" ]] || ztee_die "${names[$i]}: the guest command failed or timed out (${exit_line:-no exit line})"
  [[ $ms =~ ^[0-9]+$ ]] || ztee_die "${names[$i]}: no timing line from the guest"
  echo "$ms"
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
printf '\nboots per format: %d; tree: %d MiB apparent; load average %s\n\n' "$boots" "$((tree_kib / 1024))" \
  "$(cut -d' ' -f1-3 /proc/loadavg)"
fmt='| %-22s | %-9s | %-8s | %-26s | %-10s |\n'
# shellcheck disable=SC2059
printf "$fmt" format "size MiB" "mkfs s" "python3 cold import ms" "min-max ms"
# shellcheck disable=SC2059
printf "$fmt" "---" "---" "---" "---" "---"
for i in "${!names[@]}"; do
  # shellcheck disable=SC2059
  printf "$fmt" "${names[$i]}" "$(awk -v s="$(stat -c %s "${images[$i]}")" 'BEGIN { printf "%.1f", s / 1048576 }')" \
    "${mkfs_times[$i]}" "$(printf '%s' "${results[$i]}" | median)" "$(printf '%s' "${results[$i]}" | minmax)"
done
