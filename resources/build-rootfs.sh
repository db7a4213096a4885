#!/bin/bash
# Build the kuml test guest's file systems from busybox-static. No root, no loop mounts.
#
#   resources/build-rootfs.sh
#
# Outputs in ${KUML_GUEST_DIR:-<checkout>/build/guest}:
#   initramfs.cpio.gz  busybox + /init (resources/rootfs/init) + /sbin/kuml-uagent
#                      + /sbin/uml-names and /etc/mdev.conf (UML's /dev/ubdX, /dev/ttyN)
#                      + /sbin/mount.hostfs (hostfs/guest/mount.hostfs, docs/hostfs.md)
#   initramfs.cpio     the same, uncompressed: on PVM hosts (emulated guest kernel) gunzip of
#                      the 1 MB archive costs ~25 s of boot time; the plain cpio costs ~nothing
#   rootfs.ext4        the same tree as an ext4 image (label kumlroot, 64 MiB sparse);
#                      /sbin/init is the same init script
#   data.ext4          a test disk (label kumldata, 64 MiB sparse) with known files:
#                        /hello.txt    "hello from kuml data disk\n" (26 bytes)
#                        /pattern.bin  65536 bytes: byte i = i % 256
#                        /dir/empty    empty file
# Takes well under a second; always rebuilds (outputs are replaced atomically).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${KUML_GUEST_DIR:-$root/build/guest}
busybox=${KUML_BUSYBOX:-/bin/busybox}

log() { echo "build-rootfs: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$busybox" ] || die "$busybox missing (apt-get install busybox-static)"
file -L "$busybox" 2>/dev/null | grep -q 'dynamically linked' && die "$busybox is not static (install busybox-static)"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 missing (apt-get install e2fsprogs)"
command -v cpio >/dev/null || die "cpio missing (apt-get install cpio)"

mkdir -p "$out"
work=$(mktemp -d "$out/.rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
tree=$work/tree

# --- the busybox tree ---
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,mnt,var/log}
chmod 1777 "$tree/tmp"
cp "$busybox" "$tree/bin/busybox"
"$busybox" --list-full | while read -r applet; do
    case $applet in
    bin/busybox|sbin/init|linuxrc|"") continue ;;
    esac
    dir=$(dirname "$applet")
    rel=$(echo "$dir" | sed 's|[^/][^/]*|..|g')   # bin -> .., usr/bin -> ../..
    ln -sf "$rel/bin/busybox" "$tree/$applet"
done
install -m 0755 "$here/rootfs/init" "$tree/init"
install -m 0755 "$here/rootfs/init" "$tree/sbin/init"
install -m 0755 "$here/rootfs/uagent.sh" "$tree/sbin/kuml-uagent"
install -m 0755 "$here/rootfs/uml-names" "$tree/sbin/uml-names"
install -m 0644 "$here/rootfs/mdev.conf" "$tree/etc/mdev.conf"
install -m 0755 "$root/hostfs/guest/mount.hostfs" "$tree/sbin/mount.hostfs"
cat > "$tree/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
P
cat > "$tree/etc/group" <<'G'
root:x:0:
tty:x:5:
G
echo kuml-guest > "$tree/etc/hostname"
cat > "$tree/etc/profile" <<'PR'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
PS1='kuml-guest:\w# '
PR
: > "$tree/etc/fstab"

# --- initramfs (newc, all files owned by root) ---
(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$work/initramfs.cpio"
gzip -9 -n -k "$work/initramfs.cpio"

# --- rootfs.ext4 ---
truncate -s 64M "$work/rootfs.ext4"
mkfs.ext4 -q -F -L kumlroot -E root_owner=0:0 -d "$tree" "$work/rootfs.ext4" 64M

# --- data.ext4 ---
data=$work/data
mkdir -p "$data/dir"
printf 'hello from kuml data disk\n' > "$data/hello.txt"
: > "$data/dir/empty"
oct=""; for i in $(seq 0 255); do oct="$oct\\$(printf %03o "$i")"; done
printf "$oct" > "$work/p256"
for i in $(seq 1 256); do cat "$work/p256"; done > "$data/pattern.bin"
[ "$(stat -c %s "$data/pattern.bin")" = 65536 ] || die "pattern.bin has the wrong size"
truncate -s 64M "$work/data.ext4"
mkfs.ext4 -q -F -L kumldata -E root_owner=0:0 -d "$data" "$work/data.ext4" 64M

for f in initramfs.cpio initramfs.cpio.gz rootfs.ext4 data.ext4; do
    mv -f "$work/$f" "$out/$f"
done
log "$out/{initramfs.cpio{,.gz},rootfs.ext4,data.ext4} ($(du -h "$out/initramfs.cpio.gz" | cut -f1) initramfs)"
