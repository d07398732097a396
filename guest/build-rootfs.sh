#!/usr/bin/env bash
# Builds the default ztee sandbox root filesystem: Debian bookworm (minbase) with security updates,
# python3, ca-certificates and an unprivileged user, as a read-only erofs block image.
#
#   sudo guest/build-rootfs.sh        # build (or reuse) and print the cache directory on the last line
#   RDIR=$(sudo guest/build-rootfs.sh | tail -n1); ls "$RDIR"
#       rootfs.erofs  rootfs.sha256  packages.txt  build.log
#
# Must run as root (debootstrap creates device nodes and chowns files). The cache entry is
# ${ZTEE_CACHE_DIR:-$HOME/.cache/ztee}/rootfs/<key>/ where <key> is a sha256 over this script, the
# package list guest/rootfs/packages.list and the Debian suite; a rerun with the same inputs builds
# nothing. `--rebuild` builds anyway and replaces the entry atomically: use it to pick up Debian
# security updates published since the last build (the image digest in rootfs.sha256 then changes).
#
# Environment:
#   ZTEE_CACHE_DIR        cache root (default: $HOME/.cache/ztee)
#   ZTEE_DEBIAN_MIRROR    Debian mirror (default: http://deb.debian.org/debian)
#   ZTEE_DEBIAN_SECURITY  Debian security mirror (default: http://deb.debian.org/debian-security)
#
# Layout of the image: uid/gid 1000 `user` with home /home/user and shell /bin/sh; empty mount points
# /proc /sys /dev /tmp /run /home/user /mnt; the dpkg database (/var/lib/dpkg) is kept for the SBOM;
# apt lists, caches and logs are removed. Every file gets the same timestamp, derived from the Debian
# archive state (see SOURCE_DATE_EPOCH below), so two builds against the same archive state produce
# the same tree; docs/guest.md lists what is still not bit-for-bit reproducible.
set -euo pipefail

suite=bookworm
image_format=erofs
# lz4hc: about half the size of an uncompressed image for a small read cost; see docs/bench-guest.md.
erofs_compression=lz4hc
mirror="${ZTEE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${ZTEE_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"

script_path=$(readlink -f "${BASH_SOURCE[0]}")
guest_dir=$(dirname "$script_path")
package_list="$guest_dir/rootfs/packages.list"
cache_root="${ZTEE_CACHE_DIR:-$HOME/.cache/ztee}/rootfs"

die() { echo "build-rootfs: error: $*" >&2; exit 1; }
status() { echo "build-rootfs: $*" >&2; }

rebuild=0
for arg in "$@"; do
  case $arg in
    --rebuild) rebuild=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$script_path" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (accepted: --rebuild, --help)" ;;
  esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap creates device nodes and sets file owners); try: sudo $0"
[[ -f $package_list ]] || die "package list not found: $package_list"
for tool in debootstrap mkfs.erofs chroot sha256sum dpkg-query; do
  command -v "$tool" >/dev/null || die "'$tool' is missing; run scripts/install-deps.sh"
done

packages=()
while IFS= read -r line; do
  line=${line%%#*}
  line=${line//[[:space:]]/}
  [[ -z $line ]] && continue
  [[ $line =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || die "$package_list: '$line' is not a Debian package name"
  packages+=("$line")
done <"$package_list"
((${#packages[@]})) || die "$package_list lists no packages"

key=$(
  {
    printf 'suite: %s\n--- packages\n' "$suite"
    cat "$package_list"
    printf -- '--- script\n'
    cat "$script_path"
  } | sha256sum | cut -d' ' -f1
)
out="$cache_root/$key"
image_name="rootfs.$image_format"

if ((!rebuild)) && [[ -f $out/$image_name && -f $out/packages.txt && -f $out/rootfs.sha256 ]]; then
  status "cached: $(cut -d' ' -f1 "$out/rootfs.sha256")"
  echo "$out"
  exit 0
fi

mkdir -p "$cache_root"
work=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
root="$work/root"
cleanup() {
  # A failed chroot step may leave these mounted; never delete through a live mount.
  for mp in "$root/proc" "$root/dev/pts"; do
    mountpoint -q "$mp" 2>/dev/null && umount -l "$mp"
  done
  rm -rf "$work"
}
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
in_root() { run_logged env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C chroot "$root" "$@"; }

stage "debootstrap $suite (minbase) + ${packages[*]} from $mirror"
include=$(IFS=,; echo "${packages[*]}")
run_logged debootstrap --variant=minbase --components=main --include="$include" "$suite" "$root" "$mirror"

stage "enabling $suite-security and $suite-updates, upgrading"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF
# No daemon may start inside the build chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
in_root apt-get update
in_root apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
# Pin the timestamp of everything to the newest archive Release date: two builds against the same
# archive state then get the same timestamps, and a new security update moves them forward.
epoch=0
for release in "$root"/var/lib/apt/lists/*Release; do
  date_line=$(sed -n 's/^Date: //p' "$release" | head -n1)
  [[ -n $date_line ]] || continue
  t=$(date -u -d "$date_line" +%s)
  ((t > epoch)) && epoch=$t
done
((epoch > 0)) || die "no Date: field in the apt Release files under $root/var/lib/apt/lists"
export SOURCE_DATE_EPOCH=$epoch

stage "adding user 'user' (1000:1000)"
in_root groupadd --gid 1000 user
in_root useradd --uid 1000 --gid 1000 --home-dir /home/user --shell /bin/sh --no-create-home user
# useradd stamps the last password change with today's date; use the pinned epoch instead.
in_root chage --lastday "$((epoch / 86400))" user
install -d -m 0750 -o 1000 -g 1000 "$root/home/user"

stage "removing caches, logs and build-only files"
umount "$root/proc"
in_root apt-get clean
rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/lib/dpkg/*-old "$root"/var/cache/ldconfig/aux-cache \
  "$root"/etc/passwd- "$root"/etc/group- "$root"/etc/shadow- "$root"/etc/gshadow- \
  "$root"/root/.bash_history "$root"/var/lib/apt/extended_states
find "$root/var/log" -type f -delete
# debootstrap copies the build host's resolver and hostname; the sandbox has neither.
rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
: >"$root/etc/machine-id" 2>/dev/null || true
for dir in proc sys dev tmp run mnt; do
  find "$root/$dir" -mindepth 1 -delete
done
chmod 1777 "$root/tmp"
chmod 0755 "$root/proc" "$root/sys" "$root/dev" "$root/run" "$root/mnt"

stage "recording installed packages"
dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' |
  awk '$1 == "ii" { print $2, $3 }' | LC_ALL=C sort >"$work/packages.txt"
for pkg in "${packages[@]}"; do
  grep -q "^$pkg " "$work/packages.txt" || die "package '$pkg' is not installed in the image"
done

stage "creating $image_name (erofs, $erofs_compression)"
find "$root" -exec touch --no-dereference --date="@$epoch" {} +
# A UUID derived from the cache key: stable across rebuilds of the same recipe.
uuid=$(printf '%s' "$key" | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
run_logged mkfs.erofs -z"$erofs_compression" -T"$epoch" -U"$uuid" "$work/$image_name" "$root"

mkdir "$work/out"
mv "$work/$image_name" "$work/packages.txt" "$work/out/"
(cd "$work/out" && sha256sum "$image_name" >rootfs.sha256)
cp "$log" "$work/out/build.log"

# Atomic publish: the new entry appears complete or not at all.
if [[ -e $out ]]; then
  mv -T "$out" "$work/previous"
fi
mv -T "$work/out" "$out"
stage "done: $(cut -d' ' -f1 "$out/rootfs.sha256") ($(du -h "$out/$image_name" | cut -f1), $(wc -l <"$out/packages.txt") packages)"
echo "$out"
