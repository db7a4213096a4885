#!/bin/bash
# Installs what kuml needs on Debian 12 (root), builds kuml, the guest kernel and root
# filesystem from Debian's packages, and boots a VM to its console.
#
#   ./build-and-boot.sh [--nested] [extra kuml arguments...]
#
# The guest boots the busybox initramfs with the test init, which starts a shell on the
# console where guest user space can run (hardware KVM). On hosts whose /dev/kvm is PVM, guest
# user space cannot run: the script says so, adds the kernel options such hosts need
# (resources/pvm-cmdline.sh; kuml itself never adds them) and the boot goes as far as the guest
# kernel goes. --nested runs kuml instead inside the nested test lane's L1 machine (QEMU TCG
# with emulated AMD SVM, resources/nested.sh; slow, it is emulation), where the guest's shell
# runs: your terminal is its console (Ctrl-A x ends the L1 machine).
set -euo pipefail
cd "$(dirname "$0")"

nested=0
if [ "${1:-}" = --nested ]; then nested=1; shift; fi

resources/setup-host.sh
resources/build-guest.sh
cargo build --release -p kuml

guest=build/guest
if [ $nested = 1 ]; then
    echo "build-and-boot: booting in the nested lane (kuml inside an emulated L1; the guest's" \
         "shell follows in a minute or two; Ctrl-A x ends it)" >&2
    exec resources/nested.sh --tty -- target/release/kuml kernel=$guest/vmlinux \
        initrd=$guest/initramfs.cpio mem=256M "$@"
fi
pvm=$(resources/pvm-cmdline.sh)
if [ -n "$pvm" ]; then
    cat >&2 <<MSG
build-and-boot: this host's /dev/kvm is PVM: the guest kernel runs here, its user space cannot
build-and-boot: (the boot ends when init starts: "Attempted to kill init"). For a shell inside
build-and-boot: the guest, run:  ./build-and-boot.sh --nested   (emulated, slow: docs/testing.md)
build-and-boot: adding the guest options PVM needs: $pvm
MSG
fi
# shellcheck disable=SC2086
exec target/release/kuml kernel=$guest/vmlinux initrd=$guest/initramfs.cpio mem=256M $pvm "$@"
