#!/bin/bash
# Run a command inside the nested test lane's L1 machine: Debian's kernel under QEMU TCG with
# `-cpu max` (AMD SVM with nested paging, emulated), kvm_amd loaded, the host's root shared
# read-only (writes land in L1's memory), in the same working directory with the same paths and
# environment. Guests that kuml starts there run their user space, which this host's /dev/kvm
# (PVM) cannot. See docs/testing.md, "Lanes".
#
#   resources/nested.sh [options] -- <cmd> [args...]
#
# Prints the command's stdout and stderr as they come and exits with its exit status; 124 when
# the timeout ended L1, 125 when L1 failed before or around the command (its console log is
# printed). Holds /var/lock/kuml-tcg.lock for the whole run: one TCG VM per machine (it says so
# when it has to wait). A TERM/INT/HUP to this script ends QEMU too.
#
# Options:
#   --cpus N        L1 vCPUs (default 1: see "one vCPU" below)
#   --mem SIZE      L1 memory (default 3G)
#   --timeout S     end L1 after S seconds (default 7200)
#   --rw DIR        share the host directory DIR writable at the same path (repeatable)
#   --log FILE      keep L1's console log in FILE (default: a temporary file, removed on success)
#   --append ARGS   more kernel command-line words for L1 (e.g. for an experiment)
#   --tty           run the command on L1's console with your terminal (interactive; the
#                   default when stdin and stdout are terminals); Ctrl-A x ends QEMU
#   --no-tty        stdin from /dev/null, stdout/stderr on their own channels (the default
#                   otherwise)
# Environment: passed through except host-session variables (DISPLAY, SSH_*, XDG_*, ...);
# KUML_LANE=nested is added. Set KUML_NESTED_QEMU to use another qemu-system-x86_64.
# KUML_TCG_LOCK_HELD=1 says that the caller already holds the TCG lock for this run (run-tests.sh
# holds it for its whole nested lane, so that no other job's L1 runs between its chunks).
set -euo pipefail
# The whole script is one block, read before it runs: a checkout updated while a long run is
# under way (git rebase, pull) cannot change the rest of this run.
{

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cpus=1 mem=3G timeout=7200 log= tty=auto rw=() extra=
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
    --cpus) cpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --rw) rw+=("$(realpath -e "$2")"); shift 2 ;;
    --log) log=$2; shift 2 ;;
    --append) extra="$extra $2"; shift 2 ;;
    --tty) tty=1; shift ;;
    --no-tty) tty=0; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "nested.sh: unknown option $1 (the command comes after --)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || usage
if [ "$tty" = auto ]; then
    if [ -t 0 ] && [ -t 1 ]; then tty=1; else tty=0; fi
fi
say() { echo "nested.sh: $*" >&2; }

l1=$("$here/build-nested.sh")
qemu=${KUML_NESTED_QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null || { say "$qemu missing (resources/setup-host.sh)"; exit 125; }

job=$(mktemp -d /tmp/kuml-nested.XXXXXX)
keep_log=1
[ -n "$log" ] || { log=$job.console.log; keep_log=0; }
cleanup() { rm -rf "$job" "$job.monitor"; [ $keep_log = 1 ] || rm -f "$job.console.log"; }
trap cleanup EXIT

# The job: config for the L1 init, the environment, the command.
{
    echo "mods $l1/modroot"
    echo "tty $tty"
    if [ "$tty" = 1 ] && size=$(stty size 2>/dev/null); then
        echo "rows ${size% *}"; echo "cols ${size#* }"
    fi
    # L1 mounts fresh tmpfs on /tmp, /var/tmp, /run and /dev/shm: a working directory below
    # one of them (a checkout cloned into /tmp, as CI may do) is shown from the host's root
    # there again, writable in L1's memory like every other host path.
    case $PWD/ in
    /tmp/?*|/var/tmp/?*|/run/?*|/dev/shm/?*) echo "see $PWD" ;;
    esac
    i=0
    for d in "${rw[@]}"; do echo "rw rw$i $d"; i=$((i + 1)); done
} > "$job/config"
{
    while IFS= read -r -d '' kv; do
        k=${kv%%=*}
        case $k in
        ''|*[!A-Za-z0-9_]*|PWD|OLDPWD|SHLVL|_|DISPLAY|XAUTHORITY|SSH_*|XDG_*|DBUS_*|\
        SESSION_MANAGER|WINDOWID|KUML_LANE|KUML_TCG_LOCK_HELD) continue ;;
        esac
        printf 'export %s=%q\n' "$k" "${kv#*=}"
    done < /proc/self/environ
    echo "export KUML_LANE=nested"
    printf 'cd %q || exit 125\n' "$PWD"
    printf 'exec'; printf ' %q' "$@"; echo
} > "$job/cmd"

# `-xsave`: Debian 12's QEMU (7.2) does not check the SVM XSETBV intercept (QEMU added the
# check in 8.2, "target/i386: check intercept for XSETBV"), so L1's KVM never sees a guest's
# XSETBV: it keeps the guest's XCR0 at x87-only and loads that on every VM entry while the
# guest kernel believes SSE/AVX state is enabled. The guest then warns "XSAVE consistency
# problem" at boot, its XSAVE/XRSTOR skip the SSE state of every task, and an XRSTOR of a
# buffer with more features than XCR0 faults (#GP), which the kernel's fixup retries. Without
# XSAVE in L1's CPU, L1's KVM offers the guest no XSAVE (nor AVX), and the guest uses FXSAVE.
# One vCPU, one TCG thread: with two L1 vCPUs (`-smp 2`, multi-threaded TCG, which QEMU 7.2
# and 10.0 behave alike in) the nested guest's state was corrupted in about a third of the
# boots of a test that prints its whole kernel log on a UART (an exit per byte): the guest's
# RIP became an address inside L1's kvm_amd module and the vCPU looped on nested page faults
# at it, or the guest triple-faulted, or it deadlocked on a spinlock (measured 2026-12-04:
# 5 of 13 boots, QEMU 10.0 2 of 8; single-threaded TCG with two vCPUs 1 of 10; one vCPU 0 of 28;
# docs/testing.md, "The nested lane: what breaks it"). The guests' vCPUs then share L1's one
# CPU (slower).
args=(-accel tcg,thread=single -M q35 -cpu max,-xsave -smp "$cpus" -m "$mem"
      -nodefaults -no-user-config -display none -no-reboot
      -kernel "$l1/vmlinuz" -initrd "$l1/initramfs.gz"
      -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
      -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
      -fsdev "local,id=job,path=$job,security_model=none"
      -device virtio-9p-pci,fsdev=job,mount_tag=job)
i=0
for d in "${rw[@]}"; do
    args+=(-fsdev "local,id=rw$i,path=$d,security_model=none"
           -device "virtio-9p-pci,fsdev=rw$i,mount_tag=rw$i")
    i=$((i + 1))
done
# L1's kernel panics on a soft lockup (seen after ~20 guest boots in one L1) instead of hanging
# until the timeout.
# nohz=off highres=off: L1 ticks from a PERIODIC local APIC timer. QEMU's SVM emulation loses
# the wake-up for an interrupt now and then: L1 was found halted (HLT, IF=1) with its APIC
# timer's vector pending in IRR for good, because with one-shot timers nothing raised another
# interrupt. A periodic timer raises the next one itself, which delivers both (docs/testing.md,
# "What is left for the nested lane").
append="console=ttyS0 panic=-1 softlockup_panic=1 watchdog_thresh=30 nohz=off highres=off$extra"

# One TCG VM per machine: the lock is held on fd 8 from here until this script and QEMU (which
# inherits it) are gone. KUML_TCG_LOCK names another lock file (for testing this script).
take_lock() {
    [ "${KUML_TCG_LOCK_HELD:-}" != 1 ] || return 0
    exec 8>"${KUML_TCG_LOCK:-/var/lock/kuml-tcg.lock}"
    flock -n 8 || { say "waiting for the TCG lock (another TCG VM runs on this machine)"; flock 8; }
}

status=
if [ "$tty" = 1 ]; then
    args+=(-chardev stdio,id=con,mux=on,signal=off -serial chardev:con
           -mon chardev=con,mode=readline)
    append="$append quiet loglevel=1"
    take_lock
    timeout --foreground "$timeout" "$qemu" "${args[@]}" -append "$append" || status=$?
else
    # The command's stdout and stderr reach ours through pipes (cat), so that QEMU's writes do
    # not disturb the offset of a stdout that is a file.
    exec 5> >(exec cat) 6> >(exec cat >&2)
    # QEMU's monitor, for a look at a stuck L1: socat - UNIX-CONNECT:<job>.monitor
    echo "nested.sh: QEMU monitor: $job.monitor" > "$log"
    args+=(-monitor "unix:$job.monitor,server=on,wait=off")
    # append=on: -serial file: would truncate the log, and with it the monitor line above.
    args+=(-chardev "file,id=ser,path=$log,append=on" -serial chardev:ser -device virtio-serial-pci
           -chardev file,id=out,path=/proc/self/fd/5 -device virtserialport,chardev=out,name=kuml.stdout
           -chardev file,id=err,path=/proc/self/fd/6 -device virtserialport,chardev=err,name=kuml.stderr)
    take_lock
    # In the background, so that a signal to this script (e.g. an outer timeout) ends QEMU too
    # instead of leaving it running with the lock: timeout passes TERM/INT/HUP on to QEMU.
    timeout "$timeout" "$qemu" "${args[@]}" -append "$append" </dev/null >>"$log" 2>&1 &
    qpid=$!
    trap 'kill -TERM $qpid 2>/dev/null' TERM INT HUP
    wait $qpid || status=$?
    # A signal interrupts the first wait; wait for QEMU itself to be gone.
    while kill -0 $qpid 2>/dev/null; do wait $qpid || status=$?; done
    trap - TERM INT HUP
    exec 5>&- 6>&-
    wait
fi

if [ -f "$job/status" ]; then
    exit "$(cat "$job/status")"
fi
keep_log=1
if [ "${status:-0}" = 124 ]; then
    say "L1 ran out of time after $timeout s (--timeout); L1 console log: $log"
    rc=124
else
    say "L1 ended without the command's exit status (QEMU exit ${status:-0}); L1 console log: $log"
    rc=125
fi
[ "$tty" = 1 ] || tail -n 40 "$log" | sed 's/^/nested.sh: L1| /' >&2
exit $rc
exit
}
