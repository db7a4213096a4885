#!/usr/bin/env python3
"""Client for the kuml test agent (in-kernel kuml.agent= or user-space kuml.uagent=).

Protocol (docs/testing.md): the agent prints `KAGENT ready <kernel|user> <release>`;
each request line `<seq> <cmd> [args...]` gets one reply line
`KAGENT <seq> ok[ <payload>]` or `KAGENT <seq> err <ERRNO>[ <message>]`.
Lines not starting with `KAGENT ` (kernel log on a shared tty) are ignored.

Library use:
    from importlib.machinery import SourceFileLoader
    ac = SourceFileLoader("agent_client", "resources/agent-client.py").load_module()
    a = ac.Agent.connect_unix("/tmp/agent.sock"); a.wait_ready(60)
    a.call("read", "/mnt/hello.txt", 0, 26)      # -> payload str; raises AgentError on err

CLI:
    agent-client.py (--unix PATH | --tcp HOST:PORT | --dev PATH) [--timeout S] [CMD ...]
    Each CMD is one request without the sequence number, e.g. 'echo hi' 'uname'.
    Without CMDs, requests are read from stdin, one per line. Prints the raw reply lines.
    Exit status 1 if any request got `err`, 2 on timeout / connection errors.
"""
import argparse
import os
import select
import socket
import sys
import termios
import time
import tty


class AgentError(Exception):
    """The agent replied `err`."""

    def __init__(self, seq, reason):
        super().__init__(f"request {seq}: {reason}")
        self.seq = seq
        self.reason = reason
        self.errno_name = reason.split(" ", 1)[0] if reason else ""


class AgentTimeout(Exception):
    pass


class Agent:
    def __init__(self, fd, close=None):
        self.fd = fd
        self._close = close
        self.buf = b""
        self.seq = 0
        self.kind = None      # "kernel" or "user"
        self.release = None
        self.log = []         # non-agent lines seen (kernel log on a shared tty)

    # ---- transports ----
    @classmethod
    def connect_unix(cls, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return cls(s.fileno(), close=s.close)._keep(s)

    @classmethod
    def connect_tcp(cls, host, port, timeout=30.0):
        s = socket.create_connection((host, int(port)), timeout=timeout)
        s.settimeout(None)
        return cls(s.fileno(), close=s.close)._keep(s)

    @classmethod
    def open_dev(cls, path):
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        if os.isatty(fd):
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        return cls(fd, close=lambda: os.close(fd))

    def _keep(self, obj):
        self._obj = obj
        return self

    def close(self):
        if self._close:
            self._close()
            self._close = None

    # ---- line I/O ----
    def _send(self, line):
        data = (line + "\n").encode()
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def _readline(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentTimeout("no reply from the agent")
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise ConnectionError("agent connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")

    def _agent_line(self, deadline):
        while True:
            line = self._readline(deadline)
            i = line.find("KAGENT ")
            if i < 0:
                self.log.append(line)
                continue
            return line[i:]

    def wait_ready(self, timeout=120.0, poke=2.0):
        """Wait for the ready line; an empty line makes the agent repeat it."""
        deadline = time.monotonic() + timeout
        next_poke = time.monotonic() + poke
        while True:
            try:
                line = self._agent_line(min(deadline, next_poke))
            except AgentTimeout:
                if time.monotonic() >= deadline:
                    raise
                self._send("")
                next_poke = time.monotonic() + poke
                continue
            parts = line.split(" ")
            if len(parts) >= 4 and parts[1] == "ready":
                self.kind, self.release = parts[2], parts[3]
                return line

    def request(self, *args, timeout=120.0):
        """Send one request; return (ok, payload, raw_line)."""
        self.seq += 1
        seq = str(self.seq)
        self._send(" ".join([seq] + [str(a) for a in args]))
        deadline = time.monotonic() + timeout
        while True:
            line = self._agent_line(deadline)
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] == seq and parts[2] in ("ok", "err"):
                payload = parts[3] if len(parts) > 3 else ""
                return parts[2] == "ok", payload, line
            # stale replies / ready lines are skipped

    def call(self, *args, timeout=120.0):
        ok, payload, _ = self.request(*args, timeout=timeout)
        if not ok:
            raise AgentError(self.seq, payload)
        return payload

    # ---- conveniences ----
    def read_bytes(self, path, offset, length, timeout=120.0):
        return bytes.fromhex(self.call("read", path, offset, length, timeout=timeout))

    def write_bytes(self, path, offset, data, timeout=120.0):
        return int(self.call("write", path, offset, data.hex(), timeout=timeout))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--unix", help="unix stream socket (e.g. QEMU -chardev socket,server=on)")
    g.add_argument("--tcp", help="HOST:PORT")
    g.add_argument("--dev", help="tty/pty device path")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("cmds", nargs="*")
    o = ap.parse_args()
    try:
        if o.unix:
            a = Agent.connect_unix(o.unix, timeout=o.timeout)
        elif o.tcp:
            host, port = o.tcp.rsplit(":", 1)
            a = Agent.connect_tcp(host, port, timeout=o.timeout)
        else:
            a = Agent.open_dev(o.dev)
        print(a.wait_ready(o.timeout), flush=True)
        cmds = o.cmds or (l.strip() for l in sys.stdin)
        status = 0
        for c in cmds:
            if not c:
                continue
            ok, _, line = a.request(*c.split(" "), timeout=o.timeout)
            print(line, flush=True)
            status |= 0 if ok else 1
            if c.split(" ")[0] in ("poweroff", "reboot", "panic", "exec-init"):
                break
        return status
    except (AgentTimeout, ConnectionError, OSError) as e:
        print(f"agent-client: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
