#!/bin/sh
# Network benchmark: guest <-> host over a tap, kuml vs QEMU microvm, same kernel, same tap setup,
# in one run. A benchmark, not a test: it prints figures and never fails on them.
#
#   bench/net.sh [--json FILE] [--rounds N] [--count N] [--seconds S]
#
# Everything runs inside a private network namespace created here and deleted on exit
# (tap0 = 10.0.2.1/24 there; the guest is 10.0.2.15, configured by its kernel from `ip=`).
# The guest runs no user space: the in-kernel test agent keeps the kernel alive (on PVM hosts
# guest user space cannot run at all), so the figures are what the guest KERNEL alone allows:
#   - ICMP echo round trip (sequential pings from the namespace, median and p90),
#   - ICMP echo rate with 32 requests in flight (small packets: per-packet cost of the path),
#   - ICMP echo throughput with 1400-byte payloads, 32 in flight (bytes echoed per second).
# Not measured: TCP/UDP stream throughput and latency (iperf3/netperf style) need a program in
# the guest; the guest images carry none, and on PVM hosts no guest program can run.
# Output: a table, and with --json the "net" figure for bench/run.sh.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
json= rounds=${NET_ROUNDS:-1} count=${NET_COUNT:-100} seconds=${NET_SECONDS:-5}
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --count) count=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        *) echo "usage: bench/net.sh [--json FILE] [--rounds N] [--count N] [--seconds S]" >&2; exit 2 ;;
    esac
    shift
done
kuml=${KUML_BIN:-$root/target/release/kuml}
[ -x "$kuml" ] || kuml=$root/target/debug/kuml
guest=${KUML_GUEST_DIR:-$root/build/guest}
for f in "$kuml" "$guest/vmlinux" "$guest/initramfs.cpio.gz"; do
    [ -e "$f" ] || { echo "net.sh: missing $f (cargo build -p kuml; resources/build-guest.sh)" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "net.sh: qemu-system-x86_64 missing" >&2; exit 1; }
[ -e /dev/kvm ] || { echo "net.sh: no /dev/kvm" >&2; exit 1; }

ns=kuml-bench-net-$$
tmp=$(mktemp -d)
cleanup() {
    [ -f "$tmp/pid" ] && kill "$(cat "$tmp/pid")" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns" || { echo "net.sh: cannot create a network namespace (root needed)" >&2; exit 1; }
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add tap0 mode tap
ip -n "$ns" addr add 10.0.2.1/24 dev tap0
ip -n "$ns" link set tap0 up

hostopts=$(sh "$root/resources/pvm-cmdline.sh")
ipopt="ip=10.0.2.15::10.0.2.1:255.255.255.0::eth0:off"
cp "$guest/vmlinux" "$guest/initramfs.cpio.gz" "$tmp/"

# start <vmm> <log>: boots the guest in the namespace, leaves it running (pid in $tmp/pid).
start() {
    if [ "$1" = kuml ]; then
        # con0 on a FIFO kept open so the agent waits instead of seeing end of file.
        mkfifo "$tmp/in.$$" 2>/dev/null
        sleep 100000 > "$tmp/in.$$" &
        echo $! > "$tmp/holder"
        ip netns exec "$ns" "$kuml" kernel="$tmp/vmlinux" initrd="$tmp/initramfs.cpio.gz" mem=128M \
            eth0=tuntap,tap0 "$ipopt" kuml.agent=hvc0 $hostopts < "$tmp/in.$$" > "$2" 2>&1 &
    else
        mkfifo "$tmp/in.$$" 2>/dev/null
        sleep 100000 > "$tmp/in.$$" &
        echo $! > "$tmp/holder"
        ip netns exec "$ns" qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 128 -smp 1 \
            -nodefaults -no-user-config -display none -no-reboot -serial stdio \
            -kernel "$tmp/vmlinux" -initrd "$tmp/initramfs.cpio.gz" \
            -append "console=ttyS0 kuml.agent=ttyS0 $ipopt $hostopts" \
            -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
            -device virtio-net-device,netdev=n0 < "$tmp/in.$$" > "$2" 2>&1 &
    fi
    echo $! > "$tmp/pid"
}

stop() {
    kill "$(cat "$tmp/pid")" 2>/dev/null
    wait "$(cat "$tmp/pid")" 2>/dev/null
    kill "$(cat "$tmp/holder")" 2>/dev/null
    rm -f "$tmp/pid" "$tmp/in.$$"
}

# The measuring side: raw ICMP from the namespace's stack to the guest.
cat > "$tmp/icmp.py" <<'EOF'
import json, os, select, socket, statistics, struct, sys, time
target, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

ident = os.getpid() & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

def echo(seq, size):
    body = struct.pack("!HH", ident, seq & 0xffff) + b"k" * size
    return struct.pack("!BBH", 8, 0, csum(b"\x08\0\0\0" + body)) + body

def replies(timeout):
    """Sequence numbers of our echo replies that arrive within timeout."""
    out = []
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return out
        while True:
            try:
                p = sock.recv(65535, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            ihl = (p[0] & 15) * 4
            t, _, _, i, s = struct.unpack("!BBHHH", p[ihl:ihl + 8])
            if t == 0 and i == ident:
                out.append((s, len(p) - ihl - 8))
        if out:
            return out

# Warm up: the first replies (ARP resolution, a slow guest) are not timed.
deadline = time.monotonic() + 120
seq = 0
while True:
    seq += 1
    sock.sendto(echo(seq, 56), (target, 0))
    if replies(1.0):
        break
    if time.monotonic() > deadline:
        print(json.dumps({"error": "no echo reply from the guest"}))
        sys.exit(1)

rtts = []
lost = 0
for _ in range(count):
    seq += 1
    t0 = time.monotonic()
    sock.sendto(echo(seq, 56), (target, 0))
    got = False
    while time.monotonic() - t0 < 2:
        r = replies(2 - (time.monotonic() - t0))
        if any(s == seq & 0xffff for s, _ in r):
            rtts.append(time.monotonic() - t0)
            got = True
            break
    lost += not got

def rate(size):
    window, inflight, n, nbytes = 32, 0, 0, 0
    t0 = time.monotonic()
    global seq
    while time.monotonic() - t0 < seconds:
        while inflight < window:
            seq += 1
            sock.sendto(echo(seq, size), (target, 0))
            inflight += 1
        r = replies(0.5)
        if not r:
            inflight = 0  # lost: refill the window
        n += len(r)
        nbytes += sum(l for _, l in r)
        inflight = max(0, inflight - len(r))
    el = time.monotonic() - t0
    replies(0.5)
    return n / el, nbytes / el

pps, _ = rate(56)
_, bps = rate(1400)
rtts.sort()
print(json.dumps({"rtt_median_ms": statistics.median(rtts) * 1e3 if rtts else None,
                  "rtt_p90_ms": rtts[int(len(rtts) * 0.9) - 1] * 1e3 if rtts else None,
                  "lost": lost, "count": count, "pps": pps, "mbytes_s": bps / 1e6}))
EOF

results=$tmp/results
: > "$results"
r=1
while [ "$r" -le "$rounds" ]; do
    if [ $((r % 2)) -eq 1 ]; then order="kuml qemu"; else order="qemu kuml"; fi
    for vmm in $order; do
        log=$tmp/$vmm.$r.log
        start "$vmm" "$log"
        t0=$(date +%s)
        until grep -q "KAGENT ready" "$log" 2>/dev/null; do
            if ! kill -0 "$(cat "$tmp/pid")" 2>/dev/null || [ $(($(date +%s) - t0)) -gt 600 ]; then
                echo "net.sh: $vmm guest did not come up; last lines:" >&2
                tail -5 "$log" >&2
                break
            fi
            sleep 1
        done
        if grep -q "KAGENT ready" "$log"; then
            out=$(ip netns exec "$ns" python3 "$tmp/icmp.py" 10.0.2.15 "$count" "$seconds")
            echo "$vmm round $r: $out"
            echo "$vmm $out" >> "$results"
        fi
        stop
    done
    r=$((r + 1))
done

python3 - "$results" "${json:-}" "$rounds" "$count" "$seconds" <<'EOF'
import json, statistics, sys
path, out, rounds, count, seconds = sys.argv[1], sys.argv[2], *sys.argv[3:]
res = {"kuml": [], "qemu": []}
for line in open(path):
    vmm, js = line.split(" ", 1)
    d = json.loads(js)
    if "error" not in d:
        res[vmm].append(d)

def med(vmm, k):
    xs = [d[k] for d in res[vmm] if d.get(k) is not None]
    return statistics.median(xs) if xs else None

def fmt(x, unit, nd):
    return "n/a" if x is None else f"{x:.{nd}f} {unit}"

rows = []
for key, label, unit, nd, target in (
        ("rtt_median_ms", f"ICMP echo RTT host->guest over tap (median of {count})", "ms", 3, "lower is better"),
        ("rtt_p90_ms", "ICMP echo RTT, p90", "ms", 3, "lower is better"),
        ("pps", f"ICMP echo rate, 56 B, 32 in flight ({seconds} s)", "pkt/s", 0, "higher is better"),
        ("mbytes_s", f"ICMP echo throughput, 1400 B, 32 in flight ({seconds} s)", "MB/s", 2, "higher is better")):
    k, q = med("kuml", key), med("qemu", key)
    rows.append({"label": label, "kuml": fmt(k, unit, nd), "qemu": fmt(q, unit, nd),
                 "ratio": (k / q) if k is not None and q else None, "target": target})
lost = {v: sum(d["lost"] for d in res[v]) for v in res}
rows.append({"label": "echo requests lost in the RTT series", "kuml": str(lost["kuml"]),
             "qemu": str(lost["qemu"]), "ratio": None, "target": ""})
why = ("needs a program in the guest (iperf3/netperf); the guest images carry none and on PVM "
       "hosts guest user space cannot run")
rows.append({"label": "TCP/UDP stream throughput and latency guest<->host",
             "kuml": "not measured: " + why, "qemu": "", "ratio": None, "target": ""})
fig = {"figure": "net", "rounds": int(rounds), "runs": res, "rows": rows,
       "setup": "tap0 10.0.2.1/24 in a private netns; guest 10.0.2.15 via ip=; kernel only (in-kernel agent); "
                "QEMU: -M microvm -accel kvm, -netdev tap (no vhost), virtio-net-device"}
w = max(len(r["label"]) for r in rows)
print(f"{'':{w}}  {'kuml':>16}  {'QEMU microvm':>16}  kuml/QEMU")
for r in rows:
    ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
    print(f"{r['label']:{w}}  {r['kuml']:>16}  {r['qemu']:>16}  {ratio}")
if out:
    json.dump(fig, open(out, "w"), indent=1)
EOF
