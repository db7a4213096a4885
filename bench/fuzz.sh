#!/bin/bash
# Run every libFuzzer target in fuzz/ for a set time, one after the other, and report per
# target: executions, executions per second (of wall-clock and of CPU time), coverage (edges
# and features libFuzzer counts), corpus size, peak memory and crashes. Writes
# bench/results/fuzz-<stamp>.md.
#
#   bench/fuzz.sh [-t SECONDS] [-n RUNS] [-j JOBS] [TARGET...]   (default: 60 s each, every
#                                                                  target, one at a time)
#
# -n RUNS: stop each target after RUNS executions instead (e.g. -n 1000000 for the 10^6 goal),
# with -t as the cap (default then 1800 s); the table then shows how long each one took.
# -j JOBS: run up to JOBS targets at once (each libFuzzer process is single-threaded; the
# report says how many ran at once, since they share the cores).
#
# Builds on the pinned stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes unstable
# -Z flags: the sanitizer and coverage instrumentation); see docs/fuzzing.md. Installs
# cargo-fuzz from crates.io when it is missing. Environment:
#   FUZZ_SANITIZER  address (default) or none (faster, catches panics and hangs only)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 10)
#   FUZZ_KEEP       directory to keep each run's corpus in (default: a temporary one)
#   CARGO_TARGET_DIR  where the fuzzers are built (default fuzz/target)
# Crashing inputs are kept in fuzz/artifacts/<target>/ (ignored by git); turn each into a
# regression test in the crate it belongs to (docs/fuzzing.md).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
secs= runs= jobs=1
while getopts t:n:j: o; do
    case $o in
        t) secs=$OPTARG ;;
        n) runs=$OPTARG ;;
        j) jobs=$OPTARG ;;
        *) echo "usage: bench/fuzz.sh [-t SECONDS] [-n RUNS] [-j JOBS] [TARGET...]" >&2; exit 2 ;;
    esac
done
if [ -n "$runs" ]; then secs=${secs:-1800}; else secs=${secs:-60}; fi
shift $((OPTIND - 1))
sanitizer=${FUZZ_SANITIZER:-address}
timeout=${FUZZ_TIMEOUT:-10}
cd "$root/fuzz" || exit 1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^kuml-fuzz$')
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked --version 0.13.2 || exit 1
fi
export RUSTC_BOOTSTRAP=1
echo "fuzz.sh: building ${#targets[@]} targets (sanitizer: $sanitizer)" >&2
cargo fuzz build --debug-assertions --sanitizer "$sanitizer" || exit 1
triple=$(rustc -vV | sed -n 's/^host: //p')
bin="${CARGO_TARGET_DIR:-$root/fuzz/target}/$triple/release"

stamp=$(date -u +%Y-%m-%dT%H%M)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- . ':!fuzz/artifacts' || echo +changes)
work=${FUZZ_KEEP:-$(mktemp -d)}
[ -n "${FUZZ_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$here/results" "$work"
out="$here/results/fuzz-$stamp.md"
# One target: runs it and writes its table row to $work/$t.row.
fuzz_one() {
    local t=$1 corpus="$work/corpus/$1" arts="$root/fuzz/artifacts/$1/"
    local log start rc took cpu execs rate per_cpu rss last cov ft corp crashes found goal note
    mkdir -p "$corpus" "$arts"
    log="$work/$t.log"
    echo "fuzz.sh: $t for ${secs}s${runs:+ or $runs runs}" >&2
    start=$(date +%s)
    # The first corpus directory takes new inputs; the committed seeds are read only. The CPU
    # time the fuzzer got (user + system) is what says how fast a target is on a shared host.
    local TIMEFORMAT='%U %S'
    { time "$bin/$t" "$corpus" "seeds/$t" -max_total_time="$secs" -timeout="$timeout" \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$arts" ${runs:+-runs=$runs} \
        >"$log" 2>&1; } 2>"$work/$t.time"
    rc=$?
    took=$(($(date +%s) - start))
    cpu=$(awk '{ printf "%.1f", $1 + $2 }' "$work/$t.time")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    per_cpu=$(awk -v n="${execs:-0}" -v c="$cpu" 'BEGIN { if (c > 0) printf "%d", n / c; else print "?" }')
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's|.* corp: \([0-9]*/[0-9]*[a-zA-Z]*\).*|\1|p' <<<"$last")
    crashes=$(grep -cE '^==[0-9]+== ?ERROR|^SUMMARY: libFuzzer|panicked at' "$log")
    found=$(grep -oE "Test unit written to [^ ]+" "$log" | sed 's/Test unit written to //' | head -3)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
    goal=no
    [ "${execs:-0}" -ge 1000000 ] && goal=yes
    note=${found:+ $(echo "$found" | xargs -n1 basename | tr '\n' ' ')}
    echo "| $t | $took | $cpu | ${execs:-?} | ${rate:-?} | $per_cpu | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${rss:-?} | $crashes$note | $goal |" >"$work/$t.row"
    echo "$crashes" >"$work/$t.crashes"
    cat "$work/$t.row" >&2
}

for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    fuzz_one "$t" &
done
wait
rows=()
total_crashes=0
for t in "${targets[@]}"; do
    rows+=("$(cat "$work/$t.row" 2>/dev/null || echo "| $t | ? | ? | ? | ? | ? | ? | ? | ? | ? | 1 (no report) | no |")")
    total_crashes=$((total_crashes + $(cat "$work/$t.crashes" 2>/dev/null || echo 1)))
done

{
    echo "# Fuzzing run $stamp"
    echo
    echo "bench/fuzz.sh -t $secs${runs:+ -n $runs} -j $jobs; sanitizer $sanitizer; debug assertions on; $jobs target(s) at a time;"
    echo "$(nproc) cores, load at start: $load0, at end: $(cut -d' ' -f1-3 /proc/loadavg); $(rustc -V); commit $commit."
    echo
    echo "s: wall-clock seconds; cpu s: the CPU time the fuzzer got; exec/cpu s: executions per CPU second,"
    echo "how fast the target runs on a core of its own."
    echo
    echo "| target | s | cpu s | executions | exec/s | exec/cpu s | cov | ft | corpus | peak MB | crashes | >= 10^6 |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} >"$out"
echo "fuzz.sh: wrote $out" >&2
cat "$out"
[ "$total_crashes" -eq 0 ]
