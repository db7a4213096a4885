#!/bin/bash
# Build the nested test lane's L1 machine from Debian's packages (see docs/testing.md, "Lanes"):
# Debian's own kernel (linux-image-amd64) with its modules, and a small busybox initramfs whose
# /init (resources/nested/init) mounts the host's root read-only over virtio-9p, loads kvm_amd
# and runs one command. resources/nested.sh boots it under QEMU TCG (-cpu max: AMD SVM + NPT).
#
#   resources/build-nested.sh          prints the directory that holds the L1 artifacts
#
# Cache : ${KUML_CACHE:-/var/cache/kuml}/nested-<key>/, key = hash of this script and the init;
#           vmlinuz          the kernel (from linux-image-<abi>-amd64)
#           initramfs.gz     busybox-static, /init, the modules that mount the 9p root
#           modroot/         lib/modules/<release> of the package, depmod'ed: the L1 loads every
#                            further module (kvm_amd, tun, veth, ...) from here through the 9p root
#           package          the kernel package and version it was built from
#         A hit prints the directory and exits (milliseconds). The .deb is fetched once with
#         `apt-get download` (apt-get update when apt has no lists yet).
# Needs : busybox-static, cpio, kmod, dpkg, apt (resources/setup-host.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=resources/cache-dir.sh
. "$here/cache-dir.sh"
init=$here/nested/init
# The modules the initramfs loads itself, in dependency order (computed below with modprobe):
# virtio-pci for the devices, 9p for the root, overlay for the writable layer, virtio_console
# for the command's output ports.
boot_modules=(virtio_pci 9pnet_virtio 9p overlay virtio_console)

log() { echo "build-nested: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

key=$(cat "$here/build-nested.sh" "$init" | sha256sum | cut -c1-16)
res=$cache/nested-$key
if [ -f "$res/.done" ]; then
    echo "$res"
    exit 0
fi

for t in busybox cpio depmod modprobe dpkg apt-get; do
    command -v "$t" >/dev/null || die "$t missing (run resources/setup-host.sh)"
done
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"

mkdir -p "$cache"
exec 9>"$cache/.build-nested.lock"
flock -n 9 || { log "waiting for another build (lock $cache/.build-nested.lock)"; flock 9; }
if [ -f "$res/.done" ]; then echo "$res"; exit 0; fi

tmp=$(mktemp -d "$cache/.nested-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Debian's current kernel: the package linux-image-amd64 depends on.
pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
name=$(pkg)
if [ -z "$name" ]; then
    log "apt has no package lists: apt-get update"
    apt-get update -q >&2
    name=$(pkg)
fi
[ -n "$name" ] || die "cannot resolve linux-image-amd64 to a kernel package"
log "fetching $name"
(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$name" >&2 2>&1) || die "apt-get download $name failed"
deb=$(ls "$tmp"/"$name"_*.deb)
dpkg -x "$deb" "$tmp/pkg"
release=$(ls "$tmp/pkg/lib/modules")
[ -f "$tmp/pkg/boot/vmlinuz-$release" ] || die "no vmlinuz-$release in $deb"

mkdir -p "$tmp/out/modroot/lib"
mv "$tmp/pkg/boot/vmlinuz-$release" "$tmp/out/vmlinuz"
mv "$tmp/pkg/lib/modules" "$tmp/out/modroot/lib/modules"
depmod -b "$tmp/out/modroot" "$release"

# The initramfs: busybox, the init, the boot modules in load order.
r=$tmp/initramfs
mkdir -p "$r"/{bin,sbin,proc,sys,dev,tmp,lower,rw,newroot,modules}
cp /bin/busybox "$r/bin/busybox"
ln -s busybox "$r/bin/sh"
cp "$init" "$r/init"
chmod 755 "$r/init"
modprobe -d "$tmp/out/modroot" -S "$release" -a --show-depends "${boot_modules[@]}" |
    awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' > "$tmp/order"
while read -r ko; do
    cp "$ko" "$r/modules/"
    basename "$ko" >> "$r/modules/order"
done < "$tmp/order"
(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) > "$tmp/out/initramfs.gz"
echo "$name $(dpkg-deb -f "$deb" Version) $release" > "$tmp/out/package"

rm -rf "$res"
mv "$tmp/out" "$res"
touch "$res/.done"
log "L1: $(cat "$res/package") -> $res"
echo "$res"
