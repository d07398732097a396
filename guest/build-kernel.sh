#!/usr/bin/env bash
# Builds the ztee guest kernel from Debian's linux-source package and caches it.
#
#   guest/build-kernel.sh            # build (or reuse) and print the cache directory on the last line
#   KDIR=$(guest/build-kernel.sh | tail -n1); ls "$KDIR"
#       vmlinux  bzImage  config  version  inputs  build.log  build-seconds
#
# The cache key is a sha256 over the linux-source package name and version (Debian ships security
# fixes as new versions of it), the compiler version, the config fragment guest/kernel/microvm.config
# and this script. The result lives in ${ZTEE_CACHE_DIR:-$HOME/.cache/ztee}/kernel/<key>/; a rerun with
# the same inputs builds nothing. The build runs in a temporary directory next to the cache entry and
# is renamed into place only when complete, so an interrupted build never leaves a half-written entry.
#
# Environment:
#   ZTEE_CACHE_DIR        cache root (default: $HOME/.cache/ztee)
#   ZTEE_KERNEL_SOURCE    path to a linux-source-*.tar.xz (default: the newest in /usr/src)
#   ZTEE_KERNEL_JOBS      parallel make jobs (default: nproc)
set -euo pipefail

script_path=$(readlink -f "${BASH_SOURCE[0]}")
guest_dir=$(dirname "$script_path")
fragment="$guest_dir/kernel/microvm.config"
cache_root="${ZTEE_CACHE_DIR:-$HOME/.cache/ztee}/kernel"
jobs="${ZTEE_KERNEL_JOBS:-$(nproc)}"

die() { echo "build-kernel: error: $*" >&2; exit 1; }
status() { echo "build-kernel: $*" >&2; }

[[ -f $fragment ]] || die "config fragment not found: $fragment"

# --- locate the kernel source and its package version ---
if [[ -n ${ZTEE_KERNEL_SOURCE:-} ]]; then
  tarball="$ZTEE_KERNEL_SOURCE"
  [[ -f $tarball ]] || die "ZTEE_KERNEL_SOURCE=$tarball does not exist"
else
  tarball=$(find /usr/src -maxdepth 1 -name 'linux-source-*.tar.xz' 2>/dev/null | sort -V | tail -n1)
  [[ -n $tarball ]] || die "no /usr/src/linux-source-*.tar.xz found; install it with: apt-get install linux-source (or run scripts/install-deps.sh)"
fi
if source_pkg=$(dpkg-query -S "$tarball" 2>/dev/null | cut -d: -f1) && [[ -n $source_pkg ]]; then
  source_version="$source_pkg $(dpkg-query -W -f='${Version}' "$source_pkg")"
else
  # A tarball outside dpkg's knowledge is keyed by its content instead.
  source_version="file $(sha256sum "$tarball" | cut -d' ' -f1)"
fi
for tool in make gcc bc bison flex xz tar sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' is missing; run scripts/install-deps.sh"
done
compiler_version=$(gcc --version | head -n1)

key=$(
  {
    printf 'source: %s\ncompiler: %s\n--- fragment\n' "$source_version" "$compiler_version"
    cat "$fragment"
    printf -- '--- script\n'
    cat "$script_path"
  } | sha256sum | cut -d' ' -f1
)
out="$cache_root/$key"

if [[ -f $out/vmlinux && -f $out/bzImage && -f $out/config && -f $out/version ]]; then
  status "cached: $(cat "$out/version") ($source_version)"
  echo "$out"
  exit 0
fi

mkdir -p "$cache_root"
work=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
log="$work/build.log"
: >"$log"
started=$SECONDS
stage() { status "[$((SECONDS - started))s] $*"; }
run_logged() {
  if ! "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    cp "$log" "$cache_root/failed-build.log"
    die "'$*' failed (last 40 lines above; full log: $cache_root/failed-build.log)"
  fi
}

stage "source: $source_version ($tarball)"
stage "extracting source"
mkdir "$work/src"
run_logged tar -xJf "$tarball" -C "$work/src" --strip-components=1

stage "configuring: tinyconfig + $(basename "$fragment")"
cd "$work/src"
run_logged make tinyconfig
run_logged scripts/kconfig/merge_config.sh -m .config "$fragment"
run_logged make olddefconfig

# Every line of the fragment must survive olddefconfig: a symbol with an unmet dependency is silently
# dropped by kconfig, which would ship a kernel without a feature the sandbox relies on.
mismatches=()
while IFS= read -r line; do
  [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]] || continue
  symbol=${BASH_REMATCH[1]}
  wanted=${BASH_REMATCH[2]}
  if [[ $wanted == n ]]; then
    if grep -q "^$symbol=" .config; then
      mismatches+=("$symbol: wanted n, got $(grep "^$symbol=" .config | cut -d= -f2-)")
    fi
  elif ! grep -qxF "$symbol=$wanted" .config; then
    got=$(grep "^$symbol=" .config | cut -d= -f2- || true)
    mismatches+=("$symbol: wanted $wanted, got ${got:-unset}")
  fi
done <"$fragment"
if ((${#mismatches[@]})); then
  printf '  %s\n' "${mismatches[@]}" >&2
  die "the final .config differs from $fragment in ${#mismatches[@]} symbol(s) (unmet dependencies or renamed symbols)"
fi

stage "compiling vmlinux and bzImage with -j$jobs (log: $out/build.log once done)"
run_logged make -j"$jobs" vmlinux bzImage
version=$(make -s kernelrelease)

stage "collecting artifacts"
mkdir "$work/out"
cp vmlinux "$work/out/vmlinux"
cp arch/x86/boot/bzImage "$work/out/bzImage"
cp .config "$work/out/config"
printf '%s\n' "$version" >"$work/out/version"
printf 'source: %s\ncompiler: %s\n' "$source_version" "$compiler_version" >"$work/out/inputs"
cd /
cp "$log" "$work/out/build.log"
# Wall-clock seconds of this build, reported by guest/measure as the kernel's setup cost.
printf '%s\n' "$((SECONDS - started))" >"$work/out/build-seconds"

# Atomic publish: rename the finished directory into place. If another build won the race, keep its
# result (same inputs, same artifacts) and discard ours.
[[ -d $out && ! -f $out/vmlinux ]] && rm -rf "$out" # an incomplete entry left by hand
if ! mv -T "$work/out" "$out" 2>/dev/null; then
  [[ -f $out/vmlinux ]] || die "could not move the build into $out"
fi
stage "done: $version"
echo "$out"
