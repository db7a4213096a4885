#!/bin/sh
# Boot time of kuml next to QEMU microvm: process start -> "Run /init as init process" on the
# serial console, same kernel, initrd, memory and guest command line (console=ttyS0, plus the
# PVM options from resources/pvm-cmdline.sh on PVM hosts), rounds alternating between the two.
#
#   bench/boot.sh [rounds] [--bzimage] [--json FILE] [--mem MiB]
#
# rounds defaults to 3. --bzimage also boots build/guest/bzImage (about 70 s per boot on PVM).
# Needs build/guest/{vmlinux,bzImage,initramfs.cpio.gz} (resources/build-guest.sh) and a kuml
# binary ($KUML, else /work/target-bench/release/kuml, else target/release/kuml).
set -e
here=$(cd "$(dirname "$0")" && pwd)
rounds=3
case "$1" in [0-9]*) rounds=$1; shift ;; esac
exec python3 "$here/kbench.py" boot --rounds "$rounds" "$@"
