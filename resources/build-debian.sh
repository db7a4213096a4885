#!/bin/bash
# Build a real Debian 12 guest for kuml (issue 14, docs/testing.md "A real distribution"):
# debootstrap (minbase + systemd, udev, kmod, iproute2, procps, Debian's kernel) into an ext4
# image, a getty on con0 (hvc0, from console=hvc0) and on hvc1 (con1=pts), root password "kuml"
# (for tests only), hostname debian12. Debian's kernel and its initramfs-tools initrd (which
# loads the virtio modules from the image) are copied out next to the image.
#
#   resources/build-debian.sh       prints the directory with debian12.ext4, vmlinuz, initrd.img
#
# Cache: ${KUML_CACHE:-/var/cache/kuml}/debian12-<key>/ (key = hash of this script); a hit
# prints the directory at once. A miss takes a few minutes (downloads ~250 packages).
# Needs: debootstrap, e2fsprogs (resources/setup-host.sh). Run as root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=resources/cache-dir.sh
. "$here/cache-dir.sh"
log() { echo "build-debian: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

key=$(sha256sum < "$here/build-debian.sh" | cut -c1-16)
res=$cache/debian12-$key
if [ -f "$res/.done" ]; then echo "$res"; exit 0; fi
[ "$(id -u)" = 0 ] || die "run as root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap missing (resources/setup-host.sh)"

mkdir -p "$cache"
exec 9>"$cache/.build-debian.lock"
flock -n 9 || { log "waiting for another build (lock $cache/.build-debian.lock)"; flock 9; }
if [ -f "$res/.done" ]; then echo "$res"; exit 0; fi

tmp=$(mktemp -d "$cache/.debian-build.XXXXXX")
cleanup() {
    for m in proc sys dev/pts dev; do umount "$tmp/root/$m" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || die "no Debian mirror found in the host's apt sources"

log "debootstrap bookworm from $mirror (minbase + systemd, kernel)"
debootstrap --variant=minbase \
    --include=systemd-sysv,udev,kmod,iproute2,procps,login,passwd,linux-image-amd64,initramfs-tools,e2fsprogs \
    bookworm "$tmp/root" "$mirror" > "$tmp/debootstrap.log" 2>&1 ||
    { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }

r=$tmp/root
echo debian12 > "$r/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 debian12\n' > "$r/etc/hosts"
printf 'LABEL=debian12root / ext4 defaults,errors=remount-ro 0 1\n' > "$r/etc/fstab"
echo 'root:kuml' | chroot "$r" chpasswd
# getty on hvc1 (kuml's con1, e.g. con1=pts); hvc0 gets one from console=hvc0.
ln -sf /lib/systemd/system/serial-getty@.service \
    "$r/etc/systemd/system/getty.target.wants/serial-getty@hvc1.service"
# first boot: no machine-id yet (systemd writes one), no wait for a network
: > "$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id"
# Debian's initrd must find the virtio disk: include the virtio modules explicitly.
printf 'virtio_pci\nvirtio_blk\nvirtio_console\next4\n' >> "$r/etc/initramfs-tools/modules"
mount --bind /proc "$r/proc"; mount --bind /sys "$r/sys"; mount --bind /dev "$r/dev"
chroot "$r" update-initramfs -u -k all > "$tmp/initramfs.log" 2>&1 ||
    { tail -n 20 "$tmp/initramfs.log" >&2; die "update-initramfs failed"; }
umount "$r/dev" "$r/sys" "$r/proc"
chroot "$r" apt-get clean

mkdir -p "$tmp/out"
cp "$(ls "$r"/boot/vmlinuz-* | head -n 1)" "$tmp/out/vmlinuz"
cp "$(ls "$r"/boot/initrd.img-* | head -n 1)" "$tmp/out/initrd.img"
ls "$r"/lib/modules > "$tmp/out/kernel.release"
mke2fs -q -t ext4 -L debian12root -d "$r" "$tmp/out/debian12.ext4" 2G >&2
rm -rf "$res"
mv "$tmp/out" "$res"
touch "$res/.done"
log "Debian 12 ($(cat "$res/kernel.release")) -> $res"
echo "$res"
