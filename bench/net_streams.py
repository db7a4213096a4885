"""TCP streams between bench/net.sh's namespace and a guest on its user-space agent.

Usage (inside the namespace): net_streams.py <guest addr> <console fifo> <vmm log> <MiB>
Requests go to the agent through the guest console's FIFO (`<seq> run <hex script>`); the
replies are read from the VMM's log. Prints one JSON object: tcp_in_mbytes_s (host -> guest,
the guest's busybox `nc -l` counts the bytes), tcp_out_mbytes_s (guest `dd | nc` -> a listener
here), or {"error": ...}. A figure is the bytes over the time from the connection to the last
byte as the receiving side sees it.
"""
import json
import re
import socket
import sys
import threading
import time

target, fifo, log, mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
size = mib << 20
host = "10.0.2.1"
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


def tcp_in():
    """Host -> guest."""
    say(f"{mib} MiB into the guest")
    answer = {}
    t = in_background("nc -l -p 5001 | wc -c", answer)
    deadline = time.monotonic() + 60
    while True:
        try:
            s = socket.create_connection((target, 5001), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline or "e" in answer:
                raise RuntimeError(f"no listener in the guest after 60 s ({answer.get('e')})")
            time.sleep(0.2)
    chunk = b"k" * (64 << 10)
    say("connected")
    t0 = time.monotonic()
    for _ in range(size // len(chunk)):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(600)
    s.recv(1)  # the guest's nc closes once it has read everything
    el = time.monotonic() - t0
    s.close()
    t.join(120)
    if "e" in answer:
        raise answer["e"]
    if "r" not in answer:
        raise RuntimeError("the guest did not answer after its nc ended")
    status, out = answer["r"]
    words = out.split()
    if status != 0 or not words or int(words[0]) != size:
        raise RuntimeError(f"the guest counted {out!r} of {size} bytes (status {status})")
    return size / el


def tcp_out():
    """Guest -> host."""
    say(f"{mib} MiB out of the guest")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, 5002))
    ls.listen(1)
    ls.settimeout(120)
    answer = {}
    t = in_background(f"dd if=/dev/zero bs=64k count={size >> 16} 2>/dev/null | nc {host} 5002",
                      answer)
    c, _ = ls.accept()
    say("connected")
    c.settimeout(600)
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
    return size / el


try:
    print(json.dumps({"tcp_in_mbytes_s": tcp_in() / 1e6, "tcp_out_mbytes_s": tcp_out() / 1e6}))
except Exception as e:
    print(json.dumps({"error": f"streams: {e}"}))
