#!/bin/sh
# Hot-plug latency of a virtio-blk disk: kuml (mconsole `config ubd1=<img>`) against QEMU
# (`-M pc`, QMP `device_add virtio-blk-pci`), median of several rounds in one run of each VM.
#
#   bench/hotplug.sh [--rounds N] [--json FILE]
#
# Both guests boot the same build/guest/vmlinux with the in-kernel test agent (kernel code
# only, so it also works on PVM hosts) and the root on a virtio disk, then each round:
#   kuml: send `config ubd1=<32 MiB image>` on the mconsole socket (raw datagram, as
#         uml_mconsole sends it); time (a) to the mconsole reply, which kuml sends once the
#         guest driver has started the device (DRIVER_OK), and (b) to the guest's
#         "[vdb] 65536 512-byte logical blocks" console line; then `remove ubd1` (reply once
#         the guest has ejected the slot).
#   QEMU: blockdev-add, then time `device_add virtio-blk-pci` to the same console line (QMP
#         answers device_add at once, before the guest has seen the device); then device_del
#         until DEVICE_DELETED, blockdev-del.
# Ratio = kuml / QEMU for "request -> [vdb] line in the guest" (same kernel, same path in the
# guest: ACPI GPE -> acpiphp rescan -> BAR assignment -> virtio probe -> capacity read).
#
# What PVM adds (this project's CI host): the guest kernel runs deprivileged and every
# privileged operation, port I/O, MMIO and page-table update traps and is emulated, so the
# guest's share of the hot-plug (AML interpretation, PCI config cycles, BAR sizing, virtio
# negotiation, the partition scan) costs hundreds of ms to seconds here instead of
# milliseconds on hardware KVM. Both VMMs pay it alike; the ratio compares the VMMs, the
# absolute numbers are dominated by PVM and are not what the same hot-plug costs on hardware.
# Measured on the PVM CI host (5 rounds, release kuml): kuml config -> reply 0.90 s (the guest's
# [vdb] line comes ~10 ms before the reply), remove -> reply 1.28 s; QEMU device_add -> [vdb]
# 33.6 s, of which ~31 s is ACPICA's AML loop timeout in QEMU's \_SB.PCI0._PRT (its AML runs
# that slowly under PVM: AE_AML_LOOP_TIMEOUT, then "can't derive routing for PCI INT A"),
# device_del -> DEVICE_DELETED 2.86 s. kuml's DSDT needs no such loop. The 200 ms target
# (docs/performance.md) is not met on PVM: the guest-side probe alone takes ~0.9 s here.
# Env: KUML (kuml binary), ROUNDS (default 5).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
exec python3 - "$root" "$@" <<'PY'
import json, os, socket, statistics, struct, subprocess, sys, tempfile, threading, time

ROOT = sys.argv[1]
args = sys.argv[2:]
rounds = int(os.environ.get("ROUNDS", "5"))
json_out = None
while args:
    a = args.pop(0)
    if a == "--rounds":
        rounds = int(args.pop(0))
    elif a == "--json":
        json_out = args.pop(0)
    else:
        sys.exit("usage: bench/hotplug.sh [--rounds N] [--json FILE]")

GUEST = os.environ.get("KUML_GUEST_DIR", os.path.join(ROOT, "build/guest"))
VMLINUX = os.path.join(GUEST, "vmlinux")
ROOTFS = os.path.join(GUEST, "rootfs.ext4")
MARK = b"[vdb] 65536 512-byte logical blocks"
BOOT_TIMEOUT = 400
STEP_TIMEOUT = 240


def kuml_bin():
    for p in (os.environ.get("KUML"), "/work/target-bench/release/kuml",
              os.path.join(ROOT, "target/release/kuml"), os.path.join(ROOT, "target/debug/kuml")):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("hotplug.sh: no kuml binary (set KUML=, or cargo build --release -p kuml)")


PVM = subprocess.run([os.path.join(ROOT, "resources/pvm-cmdline.sh")],
                     capture_output=True, text=True).stdout.split()
QEMU_CPU = subprocess.run([os.path.join(ROOT, "resources/qemu-cpu.sh")],
                          capture_output=True, text=True).stdout.strip()


class Console:
    """Reads a VM's console; records when each marker first appears after a given offset."""

    def __init__(self, stream, log):
        self.buf = b""
        self.arrivals = []  # (end offset of a chunk, when it arrived)
        self.cv = threading.Condition()
        self.closed = False
        self.log = log
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        while True:
            b = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
            if not b:
                break
            self.log.write(b)
            with self.cv:
                self.buf += b
                self.arrivals.append((len(self.buf), time.monotonic()))
                self.cv.notify_all()
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def mark(self):
        with self.cv:
            return len(self.buf)

    def wait(self, pattern, since=0, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cv:
            while pattern not in self.buf[since:]:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise RuntimeError(f"timed out waiting for {pattern!r}")
                self.cv.wait(min(left, 0.5))
            # when the line's last byte arrived (it may have come before we looked)
            end = self.buf.index(pattern, since) + len(pattern)
            return next(t for off, t in self.arrivals if off >= end)


def image(d, i):
    p = os.path.join(d, f"hp{i}.img")
    with open(p, "wb") as f:
        f.truncate(32 << 20)
    return p


def mc_request(text):
    t = text.encode()
    return struct.pack("=III", 0xCAFEBABE, 2, len(t)) + t + b"\0" * (512 - len(t))


def mc_call(s, sock, text):
    s.sendto(mc_request(text), sock)
    while True:
        p = s.recv(1024)
        err, more, n = struct.unpack("=iII", p[:12])
        if not more:
            return err, p[12:12 + n - 1].decode(errors="replace")


def run_kuml(tmp, log):
    cmd = [kuml_bin(), f"kernel={VMLINUX}", "mem=128M", "noreboot", "umid=hotplug",
           f"uml_dir={tmp}", f"ubd0={tmp}/root.cow,{ROOTFS}"] + PVM + ["kuml.agent=hvc0"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    con = Console(p.stdout, log)
    res = {"reply_s": [], "guest_s": [], "remove_s": []}
    try:
        con.wait(b"KAGENT ready", timeout=BOOT_TIMEOUT)
        sock = os.path.join(tmp, "hotplug", "mconsole")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(f"\0kuml-hotplug-bench-{os.getpid()}")
        s.settimeout(STEP_TIMEOUT)
        for i in range(rounds):
            img = image(tmp, i)
            m = con.mark()
            t0 = time.monotonic()
            err, text = mc_call(s, sock, f"config ubd1={img}")
            t1 = time.monotonic()
            if err:
                raise RuntimeError(f"config ubd1: err {err}: {text}")
            t2 = con.wait(MARK, since=m)
            t3 = time.monotonic()
            err, text = mc_call(s, sock, "remove ubd1")
            t4 = time.monotonic()
            if err:
                raise RuntimeError(f"remove ubd1: err {err}: {text}")
            res["reply_s"].append(t1 - t0)
            res["guest_s"].append(max(t2, t0) - t0)
            res["remove_s"].append(t4 - t3)
            print(f"kuml round {i}: reply {t1 - t0:.3f} s, [vdb] {t2 - t0:.3f} s, remove {t4 - t3:.3f} s",
                  file=sys.stderr)
            time.sleep(1)
    finally:
        p.kill()
        p.wait()
    return res


class Qmp:
    def __init__(self, path):
        deadline = time.monotonic() + 30
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.f = self.s.makefile("rwb")
        self.events = []
        self._line()  # greeting
        self.cmd("qmp_capabilities")

    def _line(self):
        line = self.f.readline()
        if not line:
            raise RuntimeError("QMP closed")
        return json.loads(line)

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            r = self._line()
            if "event" in r:
                self.events.append(r)
            elif "error" in r:
                raise RuntimeError(f"QMP {name}: {r['error']}")
            elif "return" in r:
                return r["return"]

    def wait_event(self, name, device, timeout=STEP_TIMEOUT):
        # virtio-blk-pci sends DEVICE_DELETED twice: for its virtio backend (no "device"
        # key) and for the device itself; wait for the latter.
        self.s.settimeout(timeout)
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name and e.get("data", {}).get("device") == device:
                    del self.events[i]
                    return time.monotonic()
            self.events.append(self._line())
            self.events = [e for e in self.events if "event" in e]


def run_qemu(tmp, log):
    qmp_path = os.path.join(tmp, "qmp.sock")
    append = " ".join(["console=ttyS0"] + PVM + ["root=/dev/vda", "ro", "kuml.agent=ttyS0"])
    cmd = ["qemu-system-x86_64", "-M", "pc", "-accel", "kvm", "-cpu", QEMU_CPU, "-m", "128",
           "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-kernel", VMLINUX, "-append", append, "-serial", "stdio",
           "-drive", f"file={ROOTFS},if=none,id=root,readonly=on,format=raw,file.locking=off",
           "-device", "virtio-blk-pci,drive=root",
           "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    con = Console(p.stdout, log)
    res = {"guest_s": [], "remove_s": []}
    try:
        con.wait(b"KAGENT ready", timeout=BOOT_TIMEOUT)
        q = Qmp(qmp_path)
        for i in range(rounds):
            img = image(tmp, 100 + i)
            q.cmd("blockdev-add", driver="raw", **{"node-name": f"d{i}"},
                  file={"driver": "file", "filename": img})
            m = con.mark()
            t0 = time.monotonic()
            q.cmd("device_add", driver="virtio-blk-pci", drive=f"d{i}", id=f"v{i}")
            t2 = con.wait(MARK, since=m)
            t3 = time.monotonic()
            q.cmd("device_del", id=f"v{i}")
            t4 = q.wait_event("DEVICE_DELETED", f"v{i}")
            q.cmd("blockdev-del", **{"node-name": f"d{i}"})
            res["guest_s"].append(max(t2, t0) - t0)
            res["remove_s"].append(t4 - t3)
            print(f"qemu round {i}: [vdb] {t2 - t0:.3f} s, remove {t4 - t3:.3f} s", file=sys.stderr)
            time.sleep(1)
    finally:
        p.kill()
        p.wait()
        res["aml_loop_timeouts"] = con.buf.count(b"AE_AML_LOOP_TIMEOUT") // 2
    return res


def med(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def ms(x):
    return None if x is None else round(x * 1e3, 1)


with tempfile.TemporaryDirectory() as tmp:
    logdir = tempfile.mkdtemp(prefix="kuml-hotplug-")
    k = q = None
    why_k = why_q = None
    with open(os.path.join(logdir, "kuml.log"), "wb") as log:
        try:
            k = run_kuml(tmp, log)
        except Exception as e:  # report the reason instead of a figure
            why_k = str(e)
    with open(os.path.join(logdir, "qemu.log"), "wb") as log:
        try:
            q = run_qemu(tmp, log)
        except Exception as e:
            why_q = str(e)

kg = med(k["guest_s"]) if k else None
kr = med(k["reply_s"]) if k else None
kd = med(k["remove_s"]) if k else None
qg = med(q["guest_s"]) if q else None
qd = med(q["remove_s"]) if q else None
host = "PVM" if PVM else "hardware KVM"
rows = [
    {"label": f"hot-plug virtio-blk: request -> guest's [vdb] line, ms (median of {rounds}, {host})",
     "kuml": ms(kg), "qemu": ms(qg), "ratio": ratio(kg, qg), "target": "<= 200 ms after config"},
    {"label": "kuml: mconsole config ubd1= -> reply (guest driver started), ms",
     "kuml": ms(kr), "qemu": None, "ratio": None,
     "target": "QMP device_add returns before the guest sees the device: no QEMU counterpart"},
    {"label": "hot-unplug: remove ubd1 -> reply / device_del -> DEVICE_DELETED, ms",
     "kuml": ms(kd), "qemu": ms(qd), "ratio": ratio(kd, qd), "target": ""},
]
result = {
    "figure": "hotplug", "rounds": rounds, "host": host,
    "kuml": k, "qemu": q, "kuml_error": why_k, "qemu_error": why_q, "logs": logdir,
    "note": ("QEMU: -M pc, ACPI PCI hot-plug (piix4), QMP device_add virtio-blk-pci. "
             "On PVM the guest kernel's hot-plug path (AML, PCI config cycles, BAR sizing, "
             "virtio probe) runs emulated: both VMMs pay it; the ratio compares the VMMs."),
    "rows": rows,
}
if q and q.get("aml_loop_timeouts"):
    result["note"] += (f" This run: QEMU's \\_SB.PCI0._PRT hit ACPICA's 30 s AML loop timeout "
                       f"(AE_AML_LOOP_TIMEOUT) {q['aml_loop_timeouts']} times: its AML interpreter "
                       "is that slow under PVM emulation, so about 30 s of each QEMU figure is "
                       "that timeout (the device then works without an INTx route), not QEMU.")
    rows[0]["label"] += "; QEMU incl. a 30 s AML loop timeout per plug (PVM)"
print(result["note"])
for r in rows:
    f = lambda v: "n/a" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
    print(f"{r['label']}: kuml {f(r['kuml'])}  qemu {f(r['qemu'])}  ratio {f(r['ratio'])}")
if why_k:
    print(f"kuml: no figure: {why_k} (log {logdir}/kuml.log)")
if why_q:
    print(f"qemu: no figure: {why_q} (log {logdir}/qemu.log)")
if json_out:
    with open(json_out, "w") as f:
        json.dump(result, f, indent=1)
sys.exit(1 if why_k else 0)
PY
