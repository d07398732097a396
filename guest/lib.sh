# shellcheck shell=bash
# Shell helpers shared by guest/test-guest.sh and guest/measure/boot-bench.sh (sourced, not run).
#
# They encode how ztee boots a guest under QEMU's microvm machine; docs/guest.md explains each
# choice, and the VM engine uses the same machine type, devices and kernel command line.

ztee_die() {
  echo "${ZTEE_SCRIPT_NAME:-guest}: error: $*" >&2
  exit 1
}

# Host TSC frequency in kHz, for `tsc_early_khz=`: without it the guest calibrates the TSC against
# the emulated PIT, which under TCG on a loaded host can take seconds or hang.
ztee_tsc_khz() {
  if [[ -n ${ZTEE_TSC_KHZ:-} ]]; then
    [[ $ZTEE_TSC_KHZ =~ ^[0-9]+$ ]] || ztee_die "ZTEE_TSC_KHZ='$ZTEE_TSC_KHZ' is not a whole number of kHz"
    echo "$ZTEE_TSC_KHZ"
    return
  fi
  local mhz
  mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | head -n1)
  [[ -n $mhz ]] || mhz=$(awk -F': ' '/^cpu MHz/ { print $2; exit }' /proc/cpuinfo)
  [[ -n $mhz ]] || ztee_die "cannot determine the host TSC frequency; set ZTEE_TSC_KHZ"
  awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 }'
}

# Compiles guest/initramfs/init.c into a static binary at $1.
ztee_build_init() {
  local out=$1 src
  src="$(dirname "${BASH_SOURCE[0]}")/initramfs/init.c"
  command -v gcc >/dev/null || ztee_die "gcc is missing; run scripts/install-deps.sh"
  gcc -static -Os -s -Wall -Wextra -Werror -o "$out" "$src" ||
    ztee_die "could not compile $src as a static binary (is libc6-dev installed?)"
}

# Packs an initramfs: ztee_make_initramfs OUT ARCHIVE_PATH=HOST_FILE...
ztee_make_initramfs() {
  python3 "$(dirname "${BASH_SOURCE[0]}")/initramfs/mkcpio.py" "$@"
}

# QEMU arguments common to every guest boot. The microvm machine keeps its RTC (rtc=off costs about
# a second under TCG); -no-reboot together with `reboot=t` in the guest makes a guest reboot or
# panic end the QEMU process.
ztee_qemu_base_args() {
  local machine=$1
  printf '%s\n' -M "$machine" -accel tcg -nodefaults -no-user-config -nographic \
    -serial stdio -no-reboot -m 256 -smp 1
}

ztee_kernel_cmdline() {
  echo "console=ttyS0 quiet reboot=t panic=-1 tsc_early_khz=$(ztee_tsc_khz)"
}
