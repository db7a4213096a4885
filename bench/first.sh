#!/bin/sh
# Process start -> first guest instruction -> exit, kuml next to QEMU microvm, with a tiny ELF
# built now by bench/mktiny.py (mov al,0; out 0xf4,al; hlt, with a PVH note for QEMU); and VMs
# started per second (sequential starts of the same image).
#   bench/first.sh [rounds] [--starts N] [--json FILE]
set -e
here=$(cd "$(dirname "$0")" && pwd)
rounds=10
case "$1" in [0-9]*) rounds=$1; shift ;; esac
exec python3 "$here/kbench.py" first --rounds "$rounds" "$@"
