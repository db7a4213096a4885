#!/bin/sh
# hostfs throughput next to virtio-blk, as ratios from one run (issue 18 item 7): the same
# operations on a hostfs share (virtio-fs, a sandboxed virtiofsd per share) and on an ext4 file
# system on a virtio-blk disk, in the same guest. A benchmark, not a test: it prints medians
# and ratios, it never fails on speed.
#
#   bench/hostfs.sh [--rounds N] [--write-mib N] [--read-mib N] [--files N] [--json FILE]
#
# Defaults: 1 round, 8 MiB written, 1 MiB read, 100 small files, a tree of 10 directories of
# 20 files. Each round boots one kuml guest with both:
#   blk    ubd0=<ext4 image> (256 MiB sparse, made with mkfs.ext4 -d from the tree), mounted
#          as ext4 on /mnt/blk
#   hostfs hostfs=<directory> (the same tree), mounted with UML's `mount -t hostfs` on /mnt/host
# The guest is the project kernel with the in-kernel test agent (kuml.agent=hvc0: it works on
# PVM hosts, where guest user space cannot run) and the root from the initramfs. Before each
# read and each walk the guest drops its caches (/proc/sys/vm/drop_caches), so both reach
# their backend.
#   large write: agent `fill <dir>/big <W> a5` (page cache + fsync); figure = the guest's own
#                timing ("fill ...: N bytes in M ms" in the kernel log)
#   large read:  agent `read <dir>/big <off> 32768` for <R> MiB (host wall time: it includes
#                the console transfer of 64 KiB of hex per request, alike for both)
#   small files: <F> agent `write <dir>/small/<i> 0 <64 bytes>`, then `sync` (host wall time)
#   find:        agent `ls` of every directory of the tree (host wall time), after the drop
# On a PVM host the guest kernel is emulated and the agent's console round trip dominates the
# per-request figures: the ratios there say more than the absolute numbers; on hardware KVM
# use larger sizes (--write-mib 256 --read-mib 16 --files 1000).
# Output: a table on stdout; with --json, {"figure": "hostfs", "rows": [...], ...} for run.sh
# (column "kuml" = hostfs, column "qemu" = virtio-blk, ratio = hostfs / virtio-blk throughput).
# Needs build/guest/{vmlinux,initramfs.cpio.gz}, mkfs.ext4, virtiofsd, and a kuml binary
# ($KUML, else /work/target-bench/release/kuml, else target/release/kuml, else
# target/debug/kuml).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec python3 - "$here" "$@" <<'PY'
import json, os, re, select, statistics, subprocess, sys, tempfile, time

here = sys.argv[1]
sys.path.insert(0, here)
root = os.path.dirname(here)
args = sys.argv[2:]
rounds, wmib, rmib, nfiles, jpath = 1, 8, 1, 100, None
DIRS, PER_DIR = 10, 20
USAGE = "usage: bench/hostfs.sh [--rounds N] [--write-mib N] [--read-mib N] [--files N] [--json FILE]"
while args:
    a = args.pop(0)
    if a == "--rounds": rounds = int(args.pop(0))
    elif a == "--write-mib": wmib = int(args.pop(0))
    elif a == "--read-mib": rmib = int(args.pop(0))
    elif a == "--files": nfiles = int(args.pop(0))
    elif a == "--json": jpath = args.pop(0)
    else: sys.exit(USAGE)

guest = os.environ.get("KUML_GUEST_DIR", os.path.join(root, "build/guest"))
kernel, initrd = os.path.join(guest, "vmlinux"), os.path.join(guest, "initramfs.cpio.gz")
for p in (kernel, initrd):
    if not os.path.isfile(p):
        sys.exit(f"hostfs.sh: {p} missing (resources/build-guest.sh)")

def kuml_bin():
    for p in (os.environ.get("KUML"), "/work/target-bench/release/kuml",
              os.path.join(root, "target/release/kuml"), os.path.join(root, "target/debug/kuml")):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("hostfs.sh: no kuml binary (set KUML=, or cargo build --release -p kuml)")

KUML = kuml_bin()
pvm = subprocess.run([os.path.join(root, "resources/pvm-cmdline.sh")],
                     capture_output=True, text=True).stdout.split()
MEM = 256

def kuml_cmd(img, share):
    return [KUML, f"kernel={kernel}", f"initrd={initrd}", f"mem={MEM}M", "noreboot",
            "con=none", "con0=fd:0,fd:1", "ssl=none", f"ubd0={img}", f"hostfs={share}",
            "console=hvc0", "kuml.agent=hvc0"] + pvm

from agent_vm import Vm


def make_tree(top):
    for d in range(DIRS):
        os.makedirs(os.path.join(top, "tree", f"d{d}"), exist_ok=True)
        for f in range(PER_DIR):
            with open(os.path.join(top, "tree", f"d{d}", f"f{f}"), "w") as fh:
                fh.write(f"file {d}/{f}\n")

def measure(vm, mnt):
    """The four figures on the file system mounted at mnt."""
    r = {}
    before = len(vm.buf)
    t0 = time.monotonic()
    vm.agent(f"fill {mnt}/big {wmib} a5")
    wall = time.monotonic() - t0
    try:  # the kernel's own timing, if its log reaches the console
        m = vm.wait(rb"fill " + mnt.encode() + rb"/big: (\d+) bytes in (\d+) ms", 5, start=before)
        r["write_s"] = max(int(m.group(2)), 1) / 1000
    except RuntimeError:
        r["write_s"] = wall
    vm.drop_caches()
    t0 = time.monotonic()
    for off in range(0, rmib << 20, 32768):
        data = vm.agent(f"read {mnt}/big {off} 32768")
        if data[:8] != b"a5a5a5a5":
            raise RuntimeError(f"read {mnt}/big at {off}: unexpected data {data[:16]!r}")
    r["read_s"] = time.monotonic() - t0
    vm.agent(f"mkdir {mnt}/small")
    payload = os.urandom(32).hex()
    t0 = time.monotonic()
    for i in range(nfiles):
        vm.agent(f"write {mnt}/small/{i} 0 {payload}")
    vm.agent("sync")
    r["small_s"] = time.monotonic() - t0
    vm.drop_caches()
    t0 = time.monotonic()
    seen = 0
    for d in ["tree"] + [f"tree/d{d}" for d in range(DIRS)]:
        seen += len(vm.agent(f"ls {mnt}/{d}").split())
    r["find_s"] = time.monotonic() - t0
    if seen != DIRS + DIRS * PER_DIR:
        raise RuntimeError(f"walk of {mnt}/tree saw {seen} names")
    return r

def one(tmp, log):
    share = os.path.join(tmp, "share")
    img = os.path.join(tmp, "blk.ext4")
    subprocess.run(["rm", "-rf", share, img], check=True)
    os.makedirs(share)
    make_tree(share)
    with open(img, "wb") as f: f.truncate(256 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", share, img], check=True)
    vm = Vm(kuml_cmd(img, share), log)
    try:
        vm.wait(rb"KAGENT ready", 900)
        for cmd in ("mkdir /mnt/blk", "mkdir /mnt/host", "mount /dev/vda /mnt/blk ext4 -",
                    "mount none /mnt/host hostfs /"):
            vm.agent(cmd)
        try:
            vm.agent("mount proc /proc proc -")
        except RuntimeError:
            vm.agent("mkdir /proc"); vm.agent("mount proc /proc proc -")
        res = {"hostfs": measure(vm, "/mnt/host"), "blk": measure(vm, "/mnt/blk")}
        vm.agent("umount /mnt/host"); vm.agent("umount /mnt/blk")
    finally:
        vm.stop()
    return res

kinds = ["hostfs", "blk"]
res = {k: [] for k in kinds}
fails = []
with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "console.log"), "wb") as log:
    for i in range(rounds):
        try:
            r = one(tmp, log)
            for k in kinds:
                res[k].append(r[k])
            print(f"round {i + 1}: " + json.dumps(r), file=sys.stderr)
        except Exception as e:
            fails.append(str(e)[:400])
            print(f"round {i + 1}: FAILED {e}", file=sys.stderr)

def med(k, f):
    xs = [r[f] for r in res[k]]
    return statistics.median(xs) if xs else None

def rate(k, f, amount):
    t = med(k, f)
    return amount / t if t else None

def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None

figs = [
    ("write_s", wmib, "MiB/s", f"large file write (fill {wmib} MiB + fsync, guest-timed)"),
    ("read_s", rmib, "MiB/s", f"large file read ({rmib} MiB in 32 KiB agent reads, cold, wall)"),
    ("small_s", nfiles, "files/s", f"small files ({nfiles} x 32 B written + sync, wall)"),
    ("find_s", DIRS + 1, "dirs/s", f"find over a tree ({DIRS} dirs x {PER_DIR} files, cold, wall)"),
]
rows = []
for f, amount, unit, label in figs:
    h, b = rate("hostfs", f, amount), rate("blk", f, amount)
    show = lambda x: "n/a" if x is None else f"{x:.2f} {unit}"
    rows.append({"label": label, "kuml": f"hostfs: {show(h)}", "qemu": f"virtio-blk: {show(b)}",
                 "ratio": ratio(h, b), "target": "hostfs close to virtio-blk"})
out = {"figure": "hostfs", "rows": rows, "rounds": rounds, "write_mib": wmib, "read_mib": rmib,
       "files": nfiles, "pvm": bool(pvm), "samples": res, "failures": fails,
       "notes": "ratio = hostfs / virtio-blk throughput in the same guest (higher = hostfs "
                "faster); medians of rounds; per-request figures include the agent's console"}
print(f"{'':66} {'hostfs':>22} {'virtio-blk':>26} ratio")
for r in rows:
    print(f"{r['label']:66} {r['kuml']:>22} {r['qemu']:>26} {r['ratio']}")
if fails:
    print("failures:", json.dumps(fails, indent=1), file=sys.stderr)
if jpath:
    with open(jpath, "w") as f:
        json.dump(out, f, indent=1)
sys.exit(0 if all(res[k] for k in kinds) else 1)
PY
