#!/bin/sh
# Disk throughput through kuml: a UML COW disk vs a raw image, and kuml vs QEMU microvm on the
# same raw image. A benchmark, not a test: it prints medians and ratios, it never fails on speed.
#
#   bench/disk.sh [--rounds N] [--write-mib N] [--read-mib N] [--json FILE]
#
# Defaults: 3 rounds, 8 MiB written, 1 MiB read per guest. On a PVM host the guest kernel is
# emulated and that dominates: a loaded PVM host took ~90 s for the 8 MiB fill and ~75 s for the
# 1 MiB read, plus minutes per boot, so a full run takes most of an hour there and the ratios
# mostly reflect the emulation; on hardware KVM use larger sizes (--write-mib 256 --read-mib 16).
#
# Each round boots one guest per configuration, rounds alternating the order:
#   kuml-raw   ubd0=<raw.img>                      (64 MiB sparse file)
#   kuml-cow   ubd0=<fresh.cow>,<zero.img>         (a new COW file over a 64 MiB sparse backing)
#   qemu-raw   -M microvm, virtio-blk-device on the same kind of raw.img (cache=writeback, the
#              QEMU default; kuml also writes through the host page cache)
# The guest is the project kernel with the in-kernel test agent (kuml.agent=hvc0: it works on
# PVM hosts, where guest user space cannot run) and the root from the initramfs; QEMU gets the
# same kernel, initramfs and agent, with hvc0 on a virtconsole (virtio-serial-device).
#   write: agent `fill /dev/vda <W> a5` (page cache + fsync); figure = the guest's own timing
#          ("fill /dev/vda: N bytes in M ms" in the kernel log), host wall time also recorded.
#   read:  agent `read /dev/vda <off> 32768` for <R> MiB, sequentially, after the fill (each
#          request opens the device and the last close drops its page cache, so every request
#          reaches the disk; on the COW disk the data then comes from the COW data area).
#          The figure is host wall time, so it includes the console transfer (64 KiB of hex per
#          request): comparable between the configurations, not a raw device figure.
# Output: a table on stdout; with --json, {"figure": "disk", "rows": [...], ...} for run.sh.
# Needs build/guest/{vmlinux,initramfs.cpio.gz}, qemu-system-x86_64, and a kuml binary ($KUML,
# else /work/target-bench/release/kuml, else target/release/kuml, else target/debug/kuml).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec python3 - "$here" "$@" <<'EOF'
import json, os, re, select, signal, statistics, subprocess, sys, tempfile, time

here = sys.argv[1]
sys.path.insert(0, here)
root = os.path.dirname(here)
args = sys.argv[2:]
rounds, wmib, rmib, jpath = 3, 8, 1, None
while args:
    a = args.pop(0)
    if a == "--rounds": rounds = int(args.pop(0))
    elif a == "--write-mib": wmib = int(args.pop(0))
    elif a == "--read-mib": rmib = int(args.pop(0))
    elif a == "--json": jpath = args.pop(0)
    else: sys.exit("usage: bench/disk.sh [--rounds N] [--write-mib N] [--read-mib N] [--json FILE]")

guest = os.environ.get("KUML_GUEST_DIR", os.path.join(root, "build/guest"))
kernel, initrd = os.path.join(guest, "vmlinux"), os.path.join(guest, "initramfs.cpio.gz")
for p in (kernel, initrd):
    if not os.path.isfile(p):
        sys.exit(f"disk.sh: {p} missing (resources/build-guest.sh)")

def kuml_bin():
    for p in (os.environ.get("KUML"), "/work/target-bench/release/kuml",
              os.path.join(root, "target/release/kuml"), os.path.join(root, "target/debug/kuml")):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("disk.sh: no kuml binary (set KUML=, or cargo build --release -p kuml)")

KUML = kuml_bin()
pvm = subprocess.run([os.path.join(root, "resources/pvm-cmdline.sh")],
                     capture_output=True, text=True).stdout.split()
mkcow = os.path.join(os.path.dirname(KUML), "kuml-mkcow")
MEM = 256
guest_opts = ["kuml.agent=hvc0"] + pvm
qemu_cpu = subprocess.run([os.path.join(root, "resources/qemu-cpu.sh")],
                          capture_output=True, text=True).stdout.strip()

def kuml_cmd(disk):
    return [KUML, f"kernel={kernel}", f"initrd={initrd}", f"mem={MEM}M", "noreboot",
            "con=none", "con0=fd:0,fd:1", "ssl=none", f"ubd0={disk}", "console=hvc0"] + guest_opts

def qemu_cmd(img):
    return ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", qemu_cpu,
            "-m", str(MEM), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-drive", f"file={img},format=raw,if=none,id=d0",
            "-device", "virtio-blk-device,drive=d0",
            "-chardev", "stdio,id=c0,signal=off", "-device", "virtio-serial-device",
            "-device", "virtconsole,chardev=c0",
            "-append", " ".join(["console=hvc0"] + guest_opts)]

from agent_vm import Vm


def one(kind, tmp, log):
    raw = os.path.join(tmp, f"{kind}.img")
    if os.path.exists(raw): os.unlink(raw)
    with open(raw, "wb") as f: f.truncate(64 << 20)
    if kind == "kuml-cow":
        cow = os.path.join(tmp, "d.cow")
        if os.path.exists(cow): os.unlink(cow)
        subprocess.run([mkcow, cow, raw], check=True) if os.access(mkcow, os.X_OK) else None
        vm = Vm(kuml_cmd(f"{cow},{raw}"), log)
    elif kind == "kuml-raw":
        vm = Vm(kuml_cmd(raw), log)
    else:
        vm = Vm(qemu_cmd(raw), log)
    try:
        vm.wait(rb"KAGENT ready", 600)
        t0, before = time.monotonic(), len(vm.buf)
        vm.agent(f"fill /dev/vda {wmib} a5")
        wall_w = time.monotonic() - t0
        try:  # the kernel's own timing, if its log reaches the console
            m = vm.wait(rb"fill /dev/vda: (\d+) bytes in (\d+) ms", 5, start=before)
            guest_w = int(m.group(2)) / 1000
        except RuntimeError:
            guest_w = wall_w
        t0 = time.monotonic()
        for off in range(0, rmib << 20, 32768):
            data = vm.agent(f"read /dev/vda {off} 32768")
            if data[:8] != b"a5a5a5a5":
                raise RuntimeError(f"read at {off}: unexpected data {data[:16]!r}")
        wall_r = time.monotonic() - t0
    finally:
        vm.stop()
    return {"write_guest_s": guest_w, "write_wall_s": wall_w, "read_wall_s": wall_r}

kinds = ["kuml-raw", "kuml-cow", "qemu-raw"]
res = {k: [] for k in kinds}
fails = {k: [] for k in kinds}
with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "console.log"), "wb") as log:
    for i in range(rounds):
        order = kinds[i % 3:] + kinds[:i % 3]
        for k in order:
            try:
                r = one(k, tmp, log)
                res[k].append(r)
                print(f"round {i + 1} {k}: write {wmib} MiB {r['write_guest_s']:.2f} s (guest), "
                      f"read {rmib} MiB {r['read_wall_s']:.2f} s", file=sys.stderr)
            except Exception as e:
                fails[k].append(str(e)[:300])
                print(f"round {i + 1} {k}: FAILED {e}", file=sys.stderr)

def med(k, f):
    xs = [r[f] for r in res[k]]
    return statistics.median(xs) if xs else None

def mibs(k, f, mib):
    t = med(k, f)
    return mib / t if t else None

def ratio(a, b):
    return a / b if a is not None and b else None

def show(x):
    return "n/a" if x is None else f"{x:.2f} MiB/s"

W = {k: mibs(k, "write_guest_s", wmib) for k in kinds}
Ww = {k: mibs(k, "write_wall_s", wmib) for k in kinds}
R = {k: mibs(k, "read_wall_s", rmib) for k in kinds}
rows = [
    {"label": f"disk write, COW vs raw (kuml, fill {wmib} MiB, guest-timed)",
     "kuml": show(W["kuml-cow"]), "qemu": f"raw: {show(W['kuml-raw'])}",
     "ratio": ratio(W["kuml-cow"], W["kuml-raw"]), "target": "COW close to raw"},
    {"label": f"disk read, COW vs raw (kuml, {rmib} MiB in 32 KiB agent reads, wall)",
     "kuml": show(R["kuml-cow"]), "qemu": f"raw: {show(R['kuml-raw'])}",
     "ratio": ratio(R["kuml-cow"], R["kuml-raw"]), "target": "COW close to raw"},
    {"label": f"disk write, raw image (fill {wmib} MiB, guest-timed)",
     "kuml": show(W["kuml-raw"]), "qemu": show(W["qemu-raw"]),
     "ratio": ratio(W["kuml-raw"], W["qemu-raw"]), "target": "kuml >= QEMU"},
    {"label": f"disk write incl. agent round trip (fill {wmib} MiB, wall)",
     "kuml": show(Ww["kuml-raw"]), "qemu": show(Ww["qemu-raw"]),
     "ratio": ratio(Ww["kuml-raw"], Ww["qemu-raw"]), "target": "kuml >= QEMU"},
    {"label": f"disk read, raw image ({rmib} MiB in 32 KiB agent reads, wall)",
     "kuml": show(R["kuml-raw"]), "qemu": show(R["qemu-raw"]),
     "ratio": ratio(R["kuml-raw"], R["qemu-raw"]), "target": "kuml >= QEMU"},
]
for r in rows:
    if isinstance(r["ratio"], float):
        r["ratio"] = round(r["ratio"], 2)
out = {"figure": "disk", "rows": rows, "rounds": rounds, "write_mib": wmib, "read_mib": rmib,
       "pvm": bool(pvm), "samples": res, "failures": {k: v for k, v in fails.items() if v},
       "notes": "ratios are throughput ratios (higher = first column faster); medians of rounds;"
                " reads go through the agent's console (hex), so read figures include it"}
print(f"{'':62} {'kuml':>16} {'other':>18} ratio")
for r in rows:
    print(f"{r['label']:62} {r['kuml']:>16} {r['qemu']:>18} {r['ratio']}")
if any(fails.values()):
    print("failures:", json.dumps(out["failures"], indent=1), file=sys.stderr)
if jpath:
    with open(jpath, "w") as f:
        json.dump(out, f, indent=1)
sys.exit(0 if all(res[k] for k in kinds) else 1)
EOF
