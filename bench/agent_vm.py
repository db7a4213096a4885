"""A guest driven through its test agent on the console (stdin/stdout of the VMM process),
shared by the bench scripts that measure from inside a guest (disk.sh, hostfs.sh).

The protocol is the agents' (docs/testing.md): `<seq> <cmd> [args]` in, `KAGENT <seq> ok|err
...` out; everything the VMM prints is also written to `log`.
"""
import os
import re
import select
import subprocess
import time


class Vm:
    def __init__(self, cmd, log):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        self.buf, self.seq, self.log, self.pos = b"", 0, log, 0

    def wait(self, pat, timeout, start=None):
        """Waits for pat after `start` (default: after the previous match)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pat)
        while True:
            m = rx.search(self.buf, self.pos if start is None else start)
            if m:
                self.pos = max(self.pos, m.end())
                return m
            left = deadline - time.monotonic()
            if left <= 0 or self.p.poll() is not None and not select.select([self.p.stdout], [], [], 0)[0]:
                raise RuntimeError(f"timeout/exit waiting for {pat!r}; tail: {self.buf[-600:]!r}")
            r, _, _ = select.select([self.p.stdout], [], [], min(left, 1))
            if r:
                d = os.read(self.p.stdout.fileno(), 1 << 20)
                if d:
                    self.buf += d
                    self.log.write(d)

    def agent(self, cmd, timeout=600):
        self.seq += 1
        self.p.stdin.write(f"{self.seq} {cmd}\n".encode()); self.p.stdin.flush()
        m = self.wait(rb"KAGENT %d (ok|err)([^\r\n]*)\r?\n" % self.seq, timeout)
        if m.group(1) != b"ok":
            raise RuntimeError(f"agent {cmd}: {m.group(0)!r}")
        return m.group(2).strip()

    def drop_caches(self):
        self.agent("sync")
        self.agent(f"write /proc/sys/vm/drop_caches 0 {b'3'.hex()}")

    def stop(self):
        try:
            self.p.stdin.write(b"999 poweroff\n"); self.p.stdin.flush()
            self.p.wait(60)
        except Exception:
            self.p.kill(); self.p.wait()
