#!/bin/bash
# Installs what kuml needs on Debian 12 (root), builds kuml, the guest kernel and root
# filesystem from Debian's packages, and boots a VM to its console.
#
#   ./build-and-boot.sh [extra kuml arguments...]
#
# The guest boots the busybox initramfs with the test init, which starts a shell on the
# console where guest user space can run (hardware KVM). On hosts whose /dev/kvm is PVM, guest
# user space cannot run, so the boot goes as far as the guest kernel goes; the kernel options
# such hosts need are added here (resources/pvm-cmdline.sh), never by kuml itself.
set -euo pipefail
cd "$(dirname "$0")"

resources/setup-host.sh
resources/build-guest.sh
cargo build --release -p kuml

guest=build/guest
pvm=$(resources/pvm-cmdline.sh)
if [ -n "$pvm" ]; then
    echo "build-and-boot: PVM host: adding guest options: $pvm" >&2
    echo "build-and-boot: guest user space cannot run here; the boot ends in the kernel" >&2
fi
# shellcheck disable=SC2086
exec target/release/kuml kernel=$guest/vmlinux initrd=$guest/initramfs.cpio mem=256M $pvm "$@"
