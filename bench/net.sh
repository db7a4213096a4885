#!/bin/sh
# Network benchmark: kuml against QEMU microvm with the SAME backend, one transport after the
# other, in one run; same kernel, same path from the measuring side to the guest. A benchmark,
# not a test: it prints figures and never fails on them.
#
#   bench/net.sh [--json FILE] [--rounds N] [--count N] [--seconds S] [--transports LIST]
#                [--streams [--stream-mib N]]      (NET_LOGS=<dir>: keep each VM's console log)
#
# LIST (comma-separated, default all): the transport under the guest's eth0:
#   tap     kuml eth0=tuntap,tap0                   QEMU -netdev tap,ifname=tap0
#   vectap  kuml vec0:transport=tap,ifname=tap0     QEMU -netdev tap,ifname=tap0
#   mcast   kuml eth0=mcast,,239.192.168.7,1107,1   QEMU -netdev socket,mcast=239.192.168.7:1107
#   l2tpv3  kuml vec0:transport=l2tpv3,udp=1,...    QEMU -netdev l2tpv3,udp=on,... (same sessions)
#   vde     kuml eth0=vde,<switch>                  QEMU -netdev vde,sock=<switch>
#   slirp   kuml eth0=slirp,,passt,-t,5001,-u,5003,-m,1500
#                                                   QEMU -netdev stream to passt -t 5001 -u 5003 -m 1500
#           (-m 1500: passt's DHCP offers a 65520-byte MTU, which kuml's virtio-net does not take;
#           both guests get the same 1500)
#   fd      kuml vec0:transport=fd,fd=3             QEMU -netdev socket,fd=3
#           (descriptor 3: one end of a datagram socketpair whose other end a guestless QEMU
#           hub joins to tap0: -net tap -net socket,fd=3; bench/fdpair.py)
#   gre     kuml vec0:transport=gre,...,rx_key=7,tx_key=7   (kuml only: QEMU has no GRE netdev)
#   raw     kuml vec0:transport=raw,ifname=rw1      (kuml only: QEMU 7.2 has no AF_PACKET netdev;
#           rw1's veth peer rw0 takes 10.0.2.1 for the run)
# slirp has stream figures only: passt NATs, so the measuring side cannot send ICMP echo INTO the
# guest; it reaches the guest through passt's port forwards (127.0.0.1:5001 and :5003) and the
# guest reaches it at 10.0.9.9 through passt's outbound sockets. gre's peer is Linux's gretap,
# for want of a same-backend anchor: its figures are kuml's alone, with no ratio.
#
# Everything runs inside a private network namespace created here and deleted on exit. The
# measuring side is the namespace's own IP stack on tap0 (10.0.2.1/24; the guest is 10.0.2.15,
# configured by its kernel from `ip=`). For tap and vectap the guest's NIC is tap0 itself; for
# the others a helper joins tap0 to the transport, the same one for both VMMs: a guestless QEMU
# hub (`-machine none -net tap -net <transport>`) for mcast and l2tpv3, `vde_switch -t tap0`
# for vde; for fd, a guestless QEMU hub at the other end of the VMM's socketpair; for gre and
# raw, 10.0.2.1 moves from tap0 to a gretap device or a veth; for slirp, each VMM has its own
# passt (kuml starts it, QEMU connects to one started here). A ratio therefore compares the two
# VMMs' ends of one path; the absolute figures include the helper.
# The guest runs no user space: the in-kernel test agent keeps the kernel alive (on PVM hosts
# guest user space cannot run at all), so the figures are what the guest KERNEL alone allows:
#   - ICMP echo round trip (sequential pings from the namespace, median and p90),
#   - ICMP echo rate with 32 requests in flight (small packets: per-packet cost of the path),
#   - ICMP echo throughput with 1400-byte payloads, 32 in flight (bytes echoed per second).
# --streams (where guest user space runs: hardware KVM, the nested lane) adds TCP streams, with
# the guest on its user-space agent (kuml.uagent=) instead of the in-kernel one: N MiB (default
# 64) from the namespace into the guest (busybox `nc -l`, the guest counts them) and N MiB from
# the guest (`dd | nc`) to a listener in the namespace, and N MiB of UDP each way in unpaced
# 1400-byte datagrams (what arrives per second, and the share lost) between two copies of
# bench/udp_stream.c: one built here, one built static and appended to the guest's initramfs
# (the guest's busybox `nc` has no UDP mode). bench/net_streams.py drives them.
# Output: a table, and with --json the "net" figure for bench/run.sh.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
json= rounds=${NET_ROUNDS:-1} count=${NET_COUNT:-100} seconds=${NET_SECONDS:-5}
streams= stream_mib=${NET_STREAM_MIB:-64}
transports=${NET_TRANSPORTS:-tap,vectap,mcast,l2tpv3,vde,slirp,fd,gre,raw}
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --count) count=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --transports) transports=$2; shift ;;
        --streams) streams=1 ;;
        --stream-mib) stream_mib=$2; shift ;;
        *) echo "usage: bench/net.sh [--json FILE] [--rounds N] [--count N] [--seconds S] [--transports LIST] [--streams [--stream-mib N]]" >&2; exit 2 ;;
    esac
    shift
done
kuml=${KUML_BIN:-$root/target/release/kuml}
[ -x "$kuml" ] || kuml=$root/target/debug/kuml
guest=${KUML_GUEST_DIR:-$root/build/guest}
# The uncompressed initramfs where there is one: gunzip costs ~25 s of emulated kernel on PVM.
initrd=$guest/initramfs.cpio
[ -e "$initrd" ] || initrd=$guest/initramfs.cpio.gz
for f in "$kuml" "$guest/vmlinux" "$initrd"; do
    [ -e "$f" ] || { echo "net.sh: missing $f (cargo build -p kuml; resources/build-guest.sh)" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "net.sh: qemu-system-x86_64 missing" >&2; exit 1; }
[ -e /dev/kvm ] || { echo "net.sh: no /dev/kvm" >&2; exit 1; }
for t in $(echo "$transports" | tr , ' '); do
    case $t in
        tap|vectap|mcast|l2tpv3) ;;
        vde) command -v vde_switch >/dev/null || { echo "net.sh: vde_switch missing (apt-get install vde2)" >&2; exit 1; } ;;
        slirp) command -v passt >/dev/null || { echo "net.sh: passt missing (apt-get install passt)" >&2; exit 1; } ;;
        gre|raw|fd) ;;
        *) echo "net.sh: unknown transport '$t' (tap, vectap, mcast, l2tpv3, vde, slirp, fd, gre, raw)" >&2; exit 2 ;;
    esac
done

ns=kuml-bench-net-$$
tmp=$(mktemp -d)
passtdir=
cleanup() {
    for p in pid hub holder; do
        [ -f "$tmp/$p" ] && kill "$(cat "$tmp/$p")" 2>/dev/null
    done
    ip netns del "$ns" 2>/dev/null
    rm -rf "$tmp" ${passtdir:+"$passtdir"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns" || { echo "net.sh: cannot create a network namespace (root needed)" >&2; exit 1; }
ip -n "$ns" link set lo up multicast on
ip -n "$ns" route add 224.0.0.0/4 dev lo
ip -n "$ns" tuntap add tap0 mode tap
ip -n "$ns" addr add 10.0.2.1/24 dev tap0
ip -n "$ns" link set tap0 up
# Not measured here, with the reason (a line each: "<transport> <why>").
: > "$tmp/skipped"
skip() {
    echo "net.sh: $1 not measured: $2" >&2
    echo "$1 $2" >> "$tmp/skipped"
    transports=$(echo ",$transports," | sed "s/,$1,/,/; s/^,//; s/,\$//")
}
case ",$transports," in *,slirp,*)
    if [ -z "$streams" ]; then
        skip slirp "its only figures are streams (--streams): no ICMP into a NATed guest"
    # Started as root, passt becomes nobody and sandboxes itself in a user namespace.
    elif ! setpriv --reuid=nobody --regid=nogroup --clear-groups unshare --user true 2>/dev/null; then
        skip slirp "passt (as nobody) cannot make a user namespace here"
    fi
esac
case ",$transports," in *,slirp,*)
    # passt copies the address of the interface with the default route to its guest.
    ip -n "$ns" link add up0 type veth peer name up1
    ip -n "$ns" addr add 10.0.9.2/24 dev up0
    ip -n "$ns" addr add 10.0.9.9/32 dev up1
    ip -n "$ns" link set up0 up
    ip -n "$ns" link set up1 up
    ip -n "$ns" route add default via 10.0.9.1 dev up0
    # passt (as nobody) makes QEMU's socket here: a directory it can reach, unlike $tmp (0700).
    passtdir=$(mktemp -d /tmp/kuml-bench-passt.XXXXXX)
    chmod 777 "$passtdir" ;;
esac
case ",$transports," in *,raw,*)
    # kuml's packet socket on rw1; the measuring side's address moves to rw0 for the run.
    ip -n "$ns" link add rw0 type veth peer name rw1
    ip -n "$ns" link set rw0 up
    ip -n "$ns" link set rw1 up ;;
esac
case ",$transports," in *,gre,*)
    ip -n "$ns" link add probe0 type gretap local 127.0.0.2 remote 127.0.0.1 2>/dev/null ||
        skip gre "this kernel has no gretap (CONFIG_NET_IPGRE)"
    ip -n "$ns" link del probe0 2>/dev/null ;;
esac

hostopts=$(sh "$root/resources/pvm-cmdline.sh")
qcpu=$(sh "$root/resources/qemu-cpu.sh")
ipopt="ip=10.0.2.15::10.0.2.1:255.255.255.0::eth0:off"
cp "$guest/vmlinux" "$initrd" "$tmp/"
initrd=$tmp/$(basename "$initrd")
if [ -n "$streams" ]; then
    # The UDP stream's two ends: one for the namespace, one (static) for the guest, appended to
    # its initramfs as a second cpio archive, which the kernel unpacks over the first.
    command -v gcc >/dev/null && command -v cpio >/dev/null ||
        { echo "net.sh: --streams needs gcc and cpio (apt-get install build-essential cpio)" >&2; exit 1; }
    mkdir -p "$tmp/tools/bin"
    gcc -O2 -static -o "$tmp/tools/bin/kuml-udp" "$here/udp_stream.c" ||
        { echo "net.sh: cannot build bench/udp_stream.c" >&2; exit 1; }
    (cd "$tmp/tools" && echo bin/kuml-udp | cpio -o -H newc --quiet -R 0:0) >> "$initrd"
fi
mcast=239.192.168.7:1107
l2k="src=127.0.0.1,dst=127.0.0.1,srcport=1701,dstport=1702"   # the guest's end
l2h="src=127.0.0.1,dst=127.0.0.1,srcport=1702,dstport=1701"   # the hub's end
# A guestless QEMU that joins tap0 to the -net backend given after it (words without spaces).
qemu_hub="qemu-system-x86_64 -machine none -nodefaults -display none -net tap,ifname=tap0,script=no,downscript=no -net"

# kuml's option and QEMU's -netdev for transport $1.
kuml_net() {
    case $1 in
        tap) echo "eth0=tuntap,tap0" ;;
        vectap) echo "vec0:transport=tap,ifname=tap0" ;;
        mcast) echo "eth0=mcast,,${mcast%:*},${mcast#*:},1" ;;
        l2tpv3) echo "vec0:transport=l2tpv3,udp=1,$l2k,rx_session=0x11,tx_session=0x22" ;;
        vde) echo "eth0=vde,$tmp/sw" ;;
        slirp) echo "eth0=slirp,,passt,-t,5001,-u,5003,-m,1500" ;;
        fd) echo "vec0:transport=fd,fd=3" ;;
        raw) echo "vec0:transport=raw,ifname=rw1" ;;
        gre) echo "vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,rx_key=7,tx_key=7" ;;
    esac
}
qemu_net() {
    case $1 in
        tap|vectap) echo "tap,ifname=tap0,script=no,downscript=no" ;;
        mcast) echo "socket,mcast=$mcast" ;;
        l2tpv3) echo "l2tpv3,udp=on,$l2k,rxsession=0x11,txsession=0x22" ;;
        vde) echo "vde,sock=$tmp/sw" ;;
        slirp) echo "stream,server=off,addr.type=unix,addr.path=$passtdir/sock" ;;
        fd) echo "socket,fd=3" ;;
    esac
}

# hub <transport> <vmm>: joins the measuring side to the transport (pid in $tmp/hub).
hub() {
    case $1 in
        slirp)
            [ "$2" = qemu ] || return 0
            rm -f "$passtdir/sock"
            ip netns exec "$ns" passt -f -s "$passtdir/sock" -t 5001 -u 5003 -m 1500 \
                < /dev/null > "$tmp/hub.log" 2>&1 &
            echo $! > "$tmp/hub"
            # QEMU 7.2's stream client connects once, at start: the socket must be there.
            n=0
            until [ -S "$passtdir/sock" ] || [ $n -ge 300 ]; do sleep 0.1; n=$((n + 1)); done
            [ -S "$passtdir/sock" ] || echo "net.sh: passt made no socket in 30 s: $(tail -3 "$tmp/hub.log")" >&2 ;;
        raw)
            ip -n "$ns" addr del 10.0.2.1/24 dev tap0
            ip -n "$ns" addr add 10.0.2.1/24 dev rw0
            return 0 ;;
        gre)
            ip -n "$ns" addr del 10.0.2.1/24 dev tap0
            ip -n "$ns" link add gt0 type gretap local 127.0.0.2 remote 127.0.0.1 key 7
            ip -n "$ns" link set gt0 mtu 1500 up
            ip -n "$ns" addr add 10.0.2.1/24 dev gt0
            return 0 ;;
        mcast|l2tpv3)
            if [ "$1" = mcast ]; then
                far="socket,mcast=$mcast"
            else
                far="l2tpv3,udp=on,$l2h,rxsession=0x22,txsession=0x11"
            fi
            ip netns exec "$ns" $qemu_hub "$far" < /dev/null > "$tmp/hub.log" 2>&1 &
            echo $! > "$tmp/hub" ;;
        vde)
            rm -rf "$tmp/sw"
            ip netns exec "$ns" vde_switch -s "$tmp/sw" -t tap0 -d -p "$tmp/hub.pid" > "$tmp/hub.log" 2>&1
            cp "$tmp/hub.pid" "$tmp/hub" ;;
        *) return 0 ;;
    esac
    sleep 1
}

unhub() {
    case $1 in
        gre) ip -n "$ns" link del gt0 ;;
        raw) ip -n "$ns" addr del 10.0.2.1/24 dev rw0 ;;
    esac
    case $1 in gre|raw) ip -n "$ns" addr add 10.0.2.1/24 dev tap0 ;; esac
    [ -f "$tmp/hub" ] || return 0
    kill "$(cat "$tmp/hub")" 2>/dev/null
    sleep 1
    rm -f "$tmp/hub" "$tmp/hub.pid"
}

# start <vmm> <transport> <log>: boots the guest in the namespace, leaves it running (pid in
# $tmp/pid).
start() {
    # The console on a FIFO kept open so the agent waits instead of seeing end of file.
    mkfifo "$tmp/in.$$" 2>/dev/null
    sleep 100000 > "$tmp/in.$$" &
    echo $! > "$tmp/holder"
    # The user-space agent for the streams (it runs shell commands), else the kernel's.
    agent=kuml.agent
    [ -z "$streams" ] || agent=kuml.uagent
    ip=$ipopt
    [ "$2" != slirp ] || ip=ip=dhcp
    net=$2 log=$3
    if [ "$1" = kuml ]; then
        set -- "$kuml" kernel="$tmp/vmlinux" initrd="$initrd" mem=128M nohostfs \
            "$(kuml_net "$net")" "$ip" $agent=hvc0 $hostopts
    else
        set -- qemu-system-x86_64 -M microvm -accel kvm -cpu "$qcpu" -m 128 -smp 1 \
            -nodefaults -no-user-config -display none -no-reboot -serial stdio \
            -kernel "$tmp/vmlinux" -initrd "$initrd" \
            -append "console=ttyS0 $agent=ttyS0 $ip $hostopts" \
            -netdev "$(qemu_net "$net"),id=n0" -device virtio-net-device,netdev=n0
    fi
    if [ "$net" = fd ]; then
        # The VMM's descriptor 3 is one end of a datagram socketpair, the hub's the other.
        set -- python3 "$here/fdpair.py" "$tmp/hub" "$tmp/hub.log" $qemu_hub socket,fd=3 -- "$@"
    fi
    ip netns exec "$ns" "$@" < "$tmp/in.$$" > "$log" 2>&1 &
    echo $! > "$tmp/pid"
}

stop() {
    kill "$(cat "$tmp/pid")" 2>/dev/null
    wait "$(cat "$tmp/pid")" 2>/dev/null
    kill "$(cat "$tmp/holder")" 2>/dev/null
    rm -f "$tmp/pid" "$tmp/holder" "$tmp/in.$$"
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
for t in $(echo "$transports" | tr , ' '); do
    r=1
    while [ "$r" -le "$rounds" ]; do
        if [ $((r % 2)) -eq 1 ]; then order="kuml qemu"; else order="qemu kuml"; fi
        for vmm in $order; do
            # gre, raw: no QEMU backend to compare with.
            [ "$vmm" = kuml ] || [ -n "$(qemu_net "$t")" ] || continue
            hub "$t" "$vmm"
            log=$tmp/$vmm.$t.$r.log
            start "$vmm" "$t" "$log"
            t0=$(date +%s)
            until grep -q "KAGENT ready" "$log" 2>/dev/null; do
                if ! kill -0 "$(cat "$tmp/pid")" 2>/dev/null || [ $(($(date +%s) - t0)) -gt 600 ]; then
                    echo "net.sh: $vmm guest on $t did not come up; last lines:" >&2
                    tail -5 "$log" >&2
                    break
                fi
                sleep 1
            done
            if grep -q "KAGENT ready" "$log"; then
                echo "$t $vmm round $r: the guest is up; measuring" >&2
                if [ "$t" = slirp ]; then
                    out={}   # no ICMP into a NATed guest
                    in=127.0.0.1 back=10.0.9.9
                else
                    out=$(ip netns exec "$ns" python3 "$tmp/icmp.py" 10.0.2.15 "$count" "$seconds")
                    in=10.0.2.15 back=10.0.2.1
                fi
                if [ -n "$streams" ]; then
                    more=$(ip netns exec "$ns" python3 "$here/net_streams.py" $in $back "$tmp/in.$$" "$log" "$stream_mib" "$tmp/tools/bin/kuml-udp")
                    out=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); a.update(json.loads(sys.argv[2])); print(json.dumps(a))' "$out" "$more")
                fi
                echo "$t $vmm round $r: $out"
                echo "$t $vmm $out" >> "$results"
            fi
            stop
            unhub "$t"
            # NET_LOGS=<dir>: keep every VM's console log (e.g. a directory the nested lane
            # shares writable: --rw).
            if [ -n "${NET_LOGS:-}" ]; then
                cp "$log" "$NET_LOGS/"
                [ ! -s "$tmp/hub.log" ] || cp "$tmp/hub.log" "$NET_LOGS/hub.$vmm.$t.$r.log"
            fi
            rm -f "$tmp/hub.log"
        done
        r=$((r + 1))
    done
done

python3 - "$results" "${json:-}" "$rounds" "$count" "$seconds" "$transports" "$streams" "$stream_mib" "$tmp/skipped" <<'EOF'
import json, statistics, sys
path, out, rounds, count, seconds, transports, streams, mib, skipped = sys.argv[1], sys.argv[2], *sys.argv[3:]
res = {}
for line in open(path):
    t, vmm, js = line.split(" ", 2)
    d = json.loads(js)
    if "error" in d:
        print(f"{t} {vmm}: {d['error']}", file=sys.stderr)
    res.setdefault(t, {"kuml": [], "qemu": []})[vmm].append(d)

def med(t, vmm, k):
    xs = [d[k] for d in res.get(t, {}).get(vmm, []) if d.get(k) is not None]
    return statistics.median(xs) if xs else None

def fmt(x, unit, nd):
    return "n/a" if x is None else f"{x:.{nd}f} {unit}"

transports = [t for t in transports.split(",") if t]
rows = []
for t in transports:
    for key, label, unit, nd, target in (
            ("rtt_median_ms", f"{t}: ICMP echo RTT host->guest (median of {count})", "ms", 3, "lower is better"),
            ("rtt_p90_ms", f"{t}: ICMP echo RTT, p90", "ms", 3, "lower is better"),
            ("pps", f"{t}: ICMP echo rate, 56 B, 32 in flight ({seconds} s)", "pkt/s", 0, "higher is better"),
            ("mbytes_s", f"{t}: ICMP echo throughput, 1400 B, 32 in flight ({seconds} s)", "MB/s", 2, "higher is better"),
            *([("tcp_in_mbytes_s", f"{t}: TCP stream host->guest ({mib} MiB)", "MB/s", 2, "higher is better"),
               ("tcp_out_mbytes_s", f"{t}: TCP stream guest->host ({mib} MiB)", "MB/s", 2, "higher is better"),
               ("udp_in_mbytes_s", f"{t}: UDP stream host->guest, 1400 B unpaced ({mib} MiB)", "MB/s", 2, "higher is better"),
               ("udp_in_loss", f"{t}: UDP host->guest, share lost", "", 3, "lower is better"),
               ("udp_in_loss_rcvbuf", f"{t}: UDP host->guest, share lost at the guest's socket", "", 3, "lower is better"),
               ("udp_out_mbytes_s", f"{t}: UDP stream guest->host, 1400 B unpaced ({mib} MiB)", "MB/s", 2, "higher is better"),
               ("udp_out_loss", f"{t}: UDP guest->host, share lost", "", 3, "lower is better")]
              if streams else [])):
        k, q = med(t, "kuml", key), med(t, "qemu", key)
        rows.append({"label": label, "kuml": fmt(k, unit, nd), "qemu": fmt(q, unit, nd),
                     "ratio": (k / q) if k is not None and q else None, "target": target})
    lost = {v: sum(d.get("lost", 0) for d in res.get(t, {}).get(v, [])) for v in ("kuml", "qemu")}
    rows.append({"label": f"{t}: echo requests lost in the RTT series", "kuml": str(lost["kuml"]),
                 "qemu": str(lost["qemu"]), "ratio": None, "target": ""})
not_measured = [tuple(line.rstrip("\n").split(" ", 1)) for line in open(skipped)]
if "gre" in transports:
    not_measured.append(("gre: QEMU", "QEMU has no GRE netdev; the peer is Linux's gretap"))
if "raw" in transports:
    not_measured.append(("raw: QEMU", "QEMU 7.2 has no AF_PACKET netdev; the peer is a veth"))
if "slirp" in transports:
    not_measured.append(("slirp: ICMP", "passt NATs: no echo request reaches the guest from outside"))
if not streams:
    not_measured.append(("TCP/UDP streams", "need guest user space: --streams where it runs (not on PVM)"))
for t, why in not_measured:
    rows.append({"label": t, "kuml": "not measured: " + why, "qemu": "", "ratio": None, "target": ""})
fig = {"figure": "net", "rounds": int(rounds), "runs": res, "rows": rows,
       "setup": "tap0 10.0.2.1/24 in a private netns; guest 10.0.2.15 via ip=; "
                + ("streams: the guest's user-space agent, busybox nc (TCP), kuml-udp (UDP); " if streams else
                   "kernel only (in-kernel agent); ") +
                "QEMU: -M microvm -accel kvm, virtio-net-device on the same backend (tap without vhost); "
                "mcast and l2tpv3: a guestless QEMU hub joins tap0 to the transport; vde: vde_switch -t tap0"}
w = max(len(r["label"]) for r in rows)
print(f"{'':{w}}  {'kuml':>16}  {'QEMU microvm':>16}  kuml/QEMU")
for r in rows:
    ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
    print(f"{r['label']:{w}}  {r['kuml']:>16}  {r['qemu']:>16}  {ratio}")
if out:
    json.dump(fig, open(out, "w"), indent=1)
EOF
