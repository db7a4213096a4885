#!/bin/sh
# Run every benchmark available and write bench/results/<date>.md and .json.
#
#   bench/run.sh [--quick] [--bzimage]
#
# --quick: fewer rounds (for development; the numbers are then rougher).
# --bzimage: also time the bzImage boot (about 70 s per boot on PVM hosts).
# Rounds: BOOT_ROUNDS (5), BZ_ROUNDS (2), FIRST_ROUNDS (20), STARTS (50), MEM_ROUNDS (3).
# Scripts from other issues are run when present: bench/disk.sh, bench/net.sh, bench/hotplug.sh,
# bench/hostfs.sh, each called as `<script> --json FILE`; the JSON must have "figure"
# (disk|net|hotplug|hostfs) and
# "rows": [{"label", "kuml", "qemu", "ratio", "target"}]. A figure that cannot be taken is
# listed in the report with the reason instead of being left out.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
boot_rounds=${BOOT_ROUNDS:-5} bz_rounds=${BZ_ROUNDS:-2} first_rounds=${FIRST_ROUNDS:-20}
starts=${STARTS:-50} mem_rounds=${MEM_ROUNDS:-3} bz=
for a in "$@"; do
    case "$a" in
        --quick) boot_rounds=2 bz_rounds=1 first_rounds=5 starts=10 mem_rounds=1 ;;
        --bzimage) bz=--bzimage ;;
        *) echo "usage: bench/run.sh [--quick] [--bzimage]" >&2; exit 2 ;;
    esac
done
stamp=$(date -u +%Y-%m-%dT%H%M)
mkdir -p "$here/results"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
kb="python3 $here/kbench.py"
skipped=


if [ ! -e /dev/kvm ]; then
    echo "run.sh: no /dev/kvm: no figure can be taken" >&2
    exit 1
fi
$kb machine --json "$tmp/machine.json"
$kb first --rounds "$first_rounds" --starts "$starts" --json "$tmp/first.json" ||
    skipped="$skipped|first instruction=the run failed (see the log)"
$kb boot --rounds "$boot_rounds" $bz --bz-rounds "$bz_rounds" --json "$tmp/boot.json" ||
    skipped="$skipped|boot=the run failed (see the log)"
$kb memory --rounds "$mem_rounds" --json "$tmp/memory.json" ||
    skipped="$skipped|memory=the run failed (see the log)"
for s in disk net hotplug hostfs; do
    if [ -x "$here/$s.sh" ]; then
        "$here/$s.sh" --json "$tmp/$s.json" ||
            skipped="$skipped|$s=bench/$s.sh failed (see the log)"
    else
        skipped="$skipped|$s=bench/$s.sh does not exist yet"
    fi
done
if [ -e /sys/module/kvm_pvm ] || [ -n "$("$root/resources/pvm-cmdline.sh")" ]; then
    skipped="$skipped|guest user-space figures (UML §7 in-guest baseline)=PVM host: guest user space cannot run"
fi

# turn "|name=why|name=why" into --skipped arguments
set --
IFS='|'
for s in $skipped; do [ -n "$s" ] && set -- "$@" --skipped "$s"; done
unset IFS
$kb report --out "$here/results/$stamp" "$@" "$tmp"/*.json
