"""TCP and UDP streams between bench/net.sh's namespace and a guest on its user-space agent.

Usage (inside the namespace):
  net_streams.py <in addr> <out addr> <console fifo> <vmm log> <MiB> <kuml-udp>
<in addr>: where the measuring side reaches the guest's ports 5001 (TCP) and 5003 (UDP): the
guest itself, or a port forward to them (slirp). <out addr>: an address of the measuring side's
where the guest reaches its listeners on 5002 (TCP) and 5004 (UDP).
Requests go to the agent through the guest console's FIFO (`<seq> run <hex script>`); the
replies are read from the VMM's log. Prints one JSON object, or {"error": ...}:
  tcp_in_mbytes_s   host -> guest, the guest's busybox `nc -l` counts the bytes;
  tcp_out_mbytes_s  guest `dd | nc` -> a listener here;
  udp_in_mbytes_s, udp_in_loss, udp_out_mbytes_s, udp_out_loss: <kuml-udp> (bench/udp_stream.c)
                    here and /bin/kuml-udp in the guest (net.sh appends it to the initramfs),
                    1400-byte datagrams sent unpaced; the figure is what arrived over the time
                    from the first to the last datagram the sink saw, the loss what did not;
  udp_in_loss_rcvbuf the part of udp_in_loss the guest's kernel dropped at the sink's full
                    socket buffer (RcvbufErrors): lost in the guest, not on the way.
A TCP figure is the bytes over the time from the connection to the last byte as the receiving
side sees it.
"""
import json
import re
import socket
import subprocess
import sys
import threading
import time

target, host, fifo, log, mib, udp_tool = (*sys.argv[1:5], int(sys.argv[5]), sys.argv[6])
size = mib << 20
seq = [1000]


def run(script, timeout):
    """Runs `script` in the guest; returns (status, output)."""
    seq[0] += 1
    n = seq[0]
    with open(fifo, "w") as f:
        f.write(f"{n} run {script.encode().hex()}\n")
    pat = re.compile(rf"KAGENT {n} (ok|err) ?([^\r\n]*)[\r\n]")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(log, errors="replace") as f:
            m = pat.search(f.read())
        if m:
            if m.group(1) != "ok":
                raise RuntimeError(f"{script!r}: {m.group(2)}")
            status, _, out = m.group(2).partition(" ")
            return int(status), bytes.fromhex(out).decode(errors="replace")
        time.sleep(0.2)
    raise TimeoutError(f"no answer to {script!r}")


def in_background(script, answer):
    def go():
        try:
            answer["r"] = run(script, 600)
        except Exception as e:  # reported by the caller
            answer["e"] = e
    # A daemon: a guest that never answers must not keep this process (and the run) waiting.
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def say(what):
    print(f"net_streams: {what}", file=sys.stderr, flush=True)


def until(condition):
    """Shell for the guest: waits up to 60 s for `condition`, else exits 1."""
    return f"i=0; until {condition}; do i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.1; done"


def tcp_in():
    """Host -> guest."""
    say(f"{mib} MiB into the guest")
    # nc listens in the background and the request returns once its port is in LISTEN
    # (/proc/net/tcp or tcp6: port 5001 = 0x1389, state 0A): a port forward (slirp: passt)
    # accepts the connection here at once and only then opens one to the guest, so connecting
    # before the guest listens would stream into a connection nobody will ever read.
    # nc's stdin stays open (`sleep |`): busybox nc half-closes the connection when its stdin
    # ends, which a port forward (passt) takes as the end of the connection.
    status, out = run("rm -f /tmp/tcp_in.count; "
                      "(sleep 3600 | nc -l -p 5001 | wc -c > /tmp/tcp_in.count) "
                      ">/dev/null 2>&1 & " +
                      until("grep -q ':1389 [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6 2>/dev/null"),
                      120)
    if status != 0:
        raise RuntimeError(f"the guest's nc did not listen on 5001 within 60 s: {out!r}")
    s = socket.create_connection((target, 5001), timeout=60)
    # A path that stalls for two minutes fails the figure rather than the run.
    s.settimeout(120)
    chunk = b"k" * (64 << 10)
    say("connected")
    t0 = time.monotonic()
    for _ in range(size // len(chunk)):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the guest's nc closes once it has read everything
    el = time.monotonic() - t0
    s.close()
    status, out = run(until("[ -s /tmp/tcp_in.count ]") + "; cat /tmp/tcp_in.count", 120)
    words = out.split()
    if status != 0 or not words or int(words[0]) != size:
        raise RuntimeError(f"the guest counted {out!r} of {size} bytes (status {status})")
    return {"tcp_in_mbytes_s": size / el / 1e6}


def tcp_out():
    """Guest -> host."""
    say(f"{mib} MiB out of the guest")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", 5002))
    ls.listen(1)
    ls.settimeout(120)
    answer = {}
    t = in_background(f"dd if=/dev/zero bs=64k count={size >> 16} 2>/dev/null | nc {host} 5002",
                      answer)
    c, _ = ls.accept()
    say("connected")
    c.settimeout(120)
    t0 = time.monotonic()
    got = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        got += len(b)
    el = time.monotonic() - t0
    c.close()
    ls.close()
    t.join(120)
    if got != size:
        raise RuntimeError(f"{got} of {size} bytes arrived (guest: {answer})")
    return {"tcp_out_mbytes_s": size / el / 1e6}


DATAGRAM = 1400


def kuml_udp_said(line, word):
    """(datagrams, bytes, seconds) from kuml-udp's `<word> <datagrams> <bytes> <seconds>`."""
    words = line.split()
    if len(words) != 4 or words[0] != word:
        raise RuntimeError(f"kuml-udp said {line.strip()!r}, not its `{word}` line")
    return int(words[1]), int(words[2]), float(words[3])


def udp_figures(direction, sent_line, received_line):
    """The stream's MB/s at the sink and the share lost; also the datagrams sent."""
    sent = kuml_udp_said(sent_line, "sent")[0]
    datagrams, nbytes, seconds = kuml_udp_said(received_line, "received")
    if datagrams < 2 or seconds <= 0:
        raise RuntimeError(f"{datagrams} of {sent} datagrams arrived: no stream to time")
    return sent, {f"udp_{direction}_mbytes_s": nbytes / seconds / 1e6,
                  f"udp_{direction}_loss": 1 - datagrams / sent}


def guest_udp_counters():
    """The guest kernel's UDP counters (/proc/net/snmp's `Udp:` lines) as a dict."""
    status, out = run("grep ^Udp: /proc/net/snmp", 60)
    lines = [line.split()[1:] for line in out.splitlines()]
    if status != 0 or len(lines) != 2:
        raise RuntimeError(f"the guest's /proc/net/snmp: {out!r}")
    return dict(zip(lines[0], map(int, lines[1])))


def udp_in():
    """Host -> guest: kuml-udp here sends, the guest's counts. Also the share the guest's
    kernel dropped for a full socket buffer (the sink was too slow: guest CPU), so that the
    loss can be placed: the rest was lost before the guest's UDP layer."""
    say(f"{mib} MiB of UDP into the guest")
    before = guest_udp_counters()
    answer = {}
    t = in_background("kuml-udp sink 5003 3", answer)
    # The sender probes until the guest's sink answers (or gives up after 60 s).
    sender = subprocess.run([udp_tool, "send", target, "5003", str(size), str(DATAGRAM)],
                            capture_output=True, text=True, timeout=900)
    if sender.returncode != 0:
        raise RuntimeError(f"kuml-udp send: {sender.stderr.strip()} (guest: {answer})")
    t.join(120)
    if "e" in answer:
        raise answer["e"]
    if "r" not in answer:
        raise RuntimeError("the guest's UDP sink did not answer")
    status, out = answer["r"]
    if status != 0:
        raise RuntimeError(f"the guest's kuml-udp sink failed: {out!r}")
    after = guest_udp_counters()
    full = after.get("RcvbufErrors", 0) - before.get("RcvbufErrors", 0)
    sent, figures = udp_figures("in", sender.stdout, out)
    figures["udp_in_loss_rcvbuf"] = full / sent
    return figures


def udp_out():
    """Guest -> host: the guest's kuml-udp sends, the one here counts."""
    say(f"{mib} MiB of UDP out of the guest")
    sink = subprocess.Popen([udp_tool, "sink", "5004", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        status, out = run(f"kuml-udp send {host} 5004 {size} {DATAGRAM}", 900)
        if status != 0:
            raise RuntimeError(f"the guest's kuml-udp send failed: {out!r}")
        got, err = sink.communicate(timeout=60)
        if sink.returncode != 0:
            raise RuntimeError(f"kuml-udp sink: {err.strip()}")
    finally:
        if sink.poll() is None:
            sink.kill()
    return udp_figures("out", out, got)[1]


# Each stream on its own: one that fails leaves the others' figures.
figures, errors = {}, []
for measure in (tcp_in, tcp_out, udp_in, udp_out):
    try:
        figures.update(measure())
    except Exception as e:  # reported with the figures
        errors.append(f"{measure.__name__}: {e}")
if errors:
    figures["error"] = "streams: " + "; ".join(errors)
print(json.dumps(figures))
