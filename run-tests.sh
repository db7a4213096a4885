#!/bin/bash
# Runs kuml's whole test suite: unit and property tests of every crate, the host integration
# tests (real UML tools, sockets, network namespaces) and the e2e tests that boot real guests,
# in two lanes (docs/testing.md, "Lanes"):
#   host    the host's own KVM (on PVM hosts: kernel-level proofs; user-space tests say SKIPPED)
#   nested  the e2e test binaries again inside the nested lane's L1 (resources/nested.sh), where
#           guest user space runs; one L1 per chunk of tests
# Builds whatever is missing first (host packages, guest kernel and root filesystems, kuml).
# Run as root on Debian 12.
#
#   ./run-tests.sh [--nested | --no-nested] [--lane host|nested] [--test NAME]... [-- ARGS...]
#
#   --nested / --no-nested  run the nested lane or not (default: on where /dev/kvm cannot run
#                           guest user space (PVM), off on hardware KVM, where the host lane
#                           already runs it)
#   --lane L                only this lane (host: everything on the host; nested: only the e2e
#                           binaries in L1)
#   --test NAME             only this e2e test binary (boot, console, ...; repeatable); unit and
#                           integration tests are then skipped
#   -- ARGS                 passed to the test binaries (e.g. a test name filter, --exact)
# Env: KUML_NESTED_CHUNK (tests per L1, default 6), KUML_NESTED_TIMEOUT (s per L1, default 1200:
#      a chunk takes 1-5 min; an L1 that locks up fails its chunk instead of holding the run an hour)
#      KUML_TEST_LOGS (directory for per-lane logs and the summary, default a temporary one)
set -uo pipefail
cd "$(dirname "$0")"
# The whole script is one block, read before it runs: a checkout updated while a long run is
# under way (git rebase, pull) cannot change the rest of this run.
{

nested=auto lanes="host nested" tests=() targs=()
while [ $# -gt 0 ]; do
    case $1 in
    --nested) nested=1; shift ;;
    --no-nested) nested=0; shift ;;
    --lane) lanes=$2; shift 2 ;;
    --test) tests+=("$2"); shift 2 ;;
    --) shift; targs=("$@"); break ;;
    *) echo "run-tests.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
pvm=$(resources/pvm-cmdline.sh)
if [ "$nested" = auto ]; then
    if [ -n "$pvm" ]; then nested=1; else nested=0; fi
fi
[ "$lanes" = host ] && nested=0
[ "$lanes" = nested ] && nested=1

set -e
resources/setup-host.sh
resources/build-guest.sh
cargo build --workspace --bins
# The nested lane runs the release build of kuml (the one build-and-boot.sh builds): under TCG
# every exit that kuml handles is emulated code, and the release build boots a guest to its
# agent ~35 % faster there (measured: 31-38 s against 50-52 s). The test binaries stay debug
# (the tools next to kuml, kuml-mconsole, kuml-moo, kuml-mkcow, are release builds too).
[ "$nested" = 0 ] || cargo build --release --workspace --bins
# The Debian 12 guest (tests/tests/debian.rs) where some lane runs guest user space.
if [ "$nested" = 1 ] || [ -z "$pvm" ]; then
    KUML_DEBIAN_DIR=$(resources/build-debian.sh)
    export KUML_DEBIAN_DIR
fi
set +e

logs=${KUML_TEST_LOGS:-$(mktemp -d /tmp/kuml-tests.XXXXXX)}
mkdir -p "$logs"
summary=$logs/summary
: > "$summary"
export KUML_SKIP_LOG=$logs/skipped
: > "$KUML_SKIP_LOG"
failed=0
# Every per-test line carries its lane; cargo's closing lines stay as they are.
mark() { sed -u -E "s/^(test .* \\.\\.\\. [A-Za-z]+)$/\\1 (lane $1)/"; }
record() { # lane what status seconds
    printf '%-7s %-28s %-6s %5ss\n' "$1" "$2" "$([ "$3" = 0 ] && echo ok || echo FAILED)" "$4" >> "$summary"
    [ "$3" = 0 ] || failed=1
}

e2e_bins=(boot boot_log console control dropin hostfs mconsole net net_lab net_helpers net_vector ubd user debian)
[ ${#tests[@]} -gt 0 ] && e2e_bins=("${tests[@]}")

# The e2e test binaries and their tests ("<binary> <path to the executable>" per line).
cargo test -p kuml-e2e --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])' > "$logs/bins"
e2e_exe() { awk -v b="$1" '$1 == b { print $2 }' "$logs/bins"; }
e2e_tests() { # binary [filter args]: the binary's test names
    local exe; exe=$(e2e_exe "$1"); shift
    [ -n "$exe" ] && "$exe" --list --format terse "$@" 2>/dev/null | sed -n 's/: test$//p'
}

# On a PVM host, when this run's nested lane runs the e2e tests with guest user space, the host
# lane boots only the tests below: each proves at kernel level, on this host's own KVM, one
# area the nested lane proves again with user space on kvm_amd (boot paths and SMP, the exit
# codes, con0 and a serial line, a COW disk with uml_moo, the control seam's hot-plug, two
# guests on mcast, two guests on two "hosts" joined by a GRE tunnel, mconsole with the real
# client, hostfs, UML's `linux` process, kuml as an ordinary user: its COW disk, consoles,
# mcast, hostfs, mconsole and passt; the no-root errors; the helper transports: passt as root,
# vec fd with libslirp-helper, a kuml and a QEMU guest on vde_switch, and their errors; every
# new transport hot-plugged and removed through uml_mconsole). Every other
# e2e test is listed as NOT RUN in the host lane, with the reason; the two lanes together then
# fit .ci/run's hour on these 2-core hosts (docs/testing.md, "Lanes"). KUML_PVM_ALL_TESTS=1
# boots them all.
pvm_host_e2e=(
    boot::vmlinux_two_vcpus_reach_init boot::bzimage_one_vcpu_reaches_init
    boot::panic_exits_4 boot::reboot_restarts_the_vm_and_sigterm_stops_it
    console::con0_is_hvc0_and_carries_the_boot_log console::serial_line_carries_the_log_and_input
    control::a_disk_comes_and_goes_through_the_control_seam
    ubd::cow_root_rw_write_then_merge_with_kuml_moo_and_uml_moo
    net::mcast_two_kuml_guests_reach_each_other net_lab::gre_guests_on_two_hosts_reach_each_other
    mconsole::suites::uml_mconsole_drives_a_guest
    hostfs::mount_t_hostfs_reads_and_writes_host_files_and_never_leaves_the_export
    dropin::missing_root_fs_is_one_clear_line dropin::linux_boots_root_fs_and_behaves_as_a_uml_process
    user::an_ordinary_users_guest_boots_on_a_cow_in_its_home_with_consoles_mcast_hostfs_and_mconsole
    user::an_ordinary_user_is_told_that_making_a_tap_or_gate_needs_root
    user::an_ordinary_users_guest_gets_a_lease_from_passt
    net_helpers::slirp_passt_leases_an_address_and_forwards_a_port_to_the_guest
    net_helpers::vector_fd_from_a_socketpair_gets_dhcp_from_libslirp_helper
    net_helpers::vde_kuml_guest_and_qemu_guest_reach_each_other_on_vde_switch
    net_helpers::a_missing_switch_helper_or_descriptor_is_one_clear_line
    net_helpers::tcp_segments_reads_a_pcap_capture
    net_vector::new_transports_come_and_go_through_uml_mconsole
)
host_skips=()
if [ -n "$pvm" ] && [ "$nested" = 1 ] && [ "$lanes" != nested ] && [ -z "${KUML_PVM_ALL_TESTS:-}" ]; then
    for b in "${e2e_bins[@]}"; do
        while read -r t; do
            [ -n "$t" ] || continue
            case " ${pvm_host_e2e[*]} " in *" $b::$t "*) continue ;; esac
            host_skips+=(--skip "$t")
            echo "NOT RUN $b::$t [lane host]: PVM host (guest kernel only); this run's nested lane runs it with guest user space" |
                tee -a "$KUML_SKIP_LOG"
        done < <(e2e_tests "$b")
    done
fi

# ---- host lane
if [ "$lanes" != nested ]; then
    t0=$SECONDS
    echo "== lane host: $(if [ -n "$pvm" ]; then echo "PVM /dev/kvm (guest kernel only)"; else echo "hardware KVM"; fi)"
    # --exact makes the --skip names exact too (an e2e test's name is its path in its binary).
    skipargs=()
    if [ ${#host_skips[@]} -gt 0 ]; then
        case " ${targs[*]} " in *" --exact "*) skipargs=("${host_skips[@]}") ;; *) skipargs=(--exact "${host_skips[@]}") ;; esac
    fi
    if [ ${#tests[@]} -eq 0 ]; then
        # One e2e guest per core: more would only slow every boot under emulation.
        cargo test --workspace --no-fail-fast -- --test-threads="$(nproc)" "${skipargs[@]}" "${targs[@]}" 2>&1 |
            mark host | tee "$logs/host.log"
        record host "all tests" "${PIPESTATUS[0]}" $((SECONDS - t0))
    else
        for b in "${tests[@]}"; do
            t1=$SECONDS
            cargo test -p kuml-e2e --test "$b" -- --test-threads="$(nproc)" "${skipargs[@]}" "${targs[@]}" 2>&1 |
                mark host | tee -a "$logs/host.log"
            record host "e2e $b" "${PIPESTATUS[0]}" $((SECONDS - t1))
        done
    fi
fi

# ---- nested lane
if [ "$nested" = 1 ]; then
    echo "== lane nested: e2e tests in L1 (QEMU TCG, emulated AMD SVM; resources/nested.sh)"
    # The test binaries, built on the host (L1 sees the host's root read-only).
    chunk=${KUML_NESTED_CHUNK:-6}
    # One TCG VM per machine: the lane holds the lock from its first L1 to its last, so that no
    # other job's L1 runs between its chunks (nested.sh then does not take it again).
    exec 9>"${KUML_TCG_LOCK:-/var/lock/kuml-tcg.lock}"
    flock -n 9 || { echo "run-tests.sh: waiting for the TCG lock (another TCG VM runs on this machine)"; flock 9; }
    export KUML_TCG_LOCK_HELD=1
    # The guests' console logs, written by the tests in L1 straight to the host (kept for
    # failed tests; readable while they run).
    mkdir -p "$logs/e2e-nested"
    for b in "${e2e_bins[@]}"; do
        exe=$(e2e_exe "$b")
        if [ -z "$exe" ]; then
            echo "run-tests.sh: no e2e test binary '$b'" >&2; record nested "e2e $b" 1 0; continue
        fi
        mapfile -t names < <(e2e_tests "$b" "${targs[@]}")
        # Chunks of at most $chunk tests; a test that boots many guests (many_boots_*) gets an
        # L1 of its own.
        chunks=() cur=()
        for t in "${names[@]}"; do
            case $t in
            *many_boots*|*every_boot*) chunks+=("$t") ;;
            *) cur+=("$t"); [ ${#cur[@]} -lt "$chunk" ] || { chunks+=("${cur[*]}"); cur=(); } ;;
            esac
        done
        [ ${#cur[@]} -eq 0 ] || chunks+=("${cur[*]}")
        parts=${#chunks[@]} part=1
        for c in "${chunks[@]}"; do
            read -r -a sel <<< "$c"
            t1=$SECONDS
            echo "== lane nested: $b [$part/$parts]: ${sel[*]}"
            KUML_BIN=$PWD/target/release/kuml KUML_E2E_LOGS=$logs/e2e-nested resources/nested.sh --timeout "${KUML_NESTED_TIMEOUT:-1200}" \
                --rw "$logs/e2e-nested" --log "$logs/nested-$b-$part.l1.log" -- "$exe" --test-threads=1 --exact "${sel[@]}" 2>&1 | mark nested | tee -a "$logs/nested.log"
            record nested "e2e $b [$part/$parts]" "${PIPESTATUS[0]}" $((SECONDS - t1))
            part=$((part + 1))
        done
    done
    exec 9>&-
    unset KUML_TCG_LOCK_HELD
fi

echo
echo "== summary (logs: $logs)"
cat "$summary"
awk '{ t[$1] += $NF + 0 } END { for (l in t) printf "lane %-7s total %5d s (%d min)\n", l, t[l], t[l] / 60 }' "$summary"
if [ -s "$KUML_SKIP_LOG" ]; then
    echo "== tests that could not run in their lane:"
    sort -u "$KUML_SKIP_LOG"
fi
exit $failed
exit
}
