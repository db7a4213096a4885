#!/bin/sh
# VMM memory overhead of an idle guest (process RSS minus the guest RAM mapping's RSS), kuml
# next to QEMU microvm, and the idle VMs per host estimate.
#   bench/memory.sh [rounds] [--mem MiB] [--settle S] [--json FILE]
set -e
here=$(cd "$(dirname "$0")" && pwd)
rounds=1
case "$1" in [0-9]*) rounds=$1; shift ;; esac
exec python3 "$here/kbench.py" memory --rounds "$rounds" "$@"
