#!/usr/bin/env python3
"""kuml benchmarks next to QEMU microvm (the anchor). See docs/performance.md.

Subcommands (each prints a table and, with --json FILE, writes its figures as JSON):
  boot    process start -> `Run /init as init process` on the console (vmlinux or bzImage)
  first   process start -> exit of a tiny ELF whose first instruction writes the exit port,
          and VMs started per second (sequential starts)
  memory  VMM memory overhead of an idle guest (RSS minus the guest RAM mapping's RSS), and
          an estimate of how many idle VMs of that size one host holds
  machine the machine description (CPU, cores, memory, host kernel, PVM, QEMU, kuml commit)
  report  merge JSON files into one .json and one .md

Benchmarks, not tests: every figure is the median of several rounds taken in one run, printed
next to the anchor's and as a ratio kuml/QEMU. Only wall clock of the host is used.
"""
import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOT_MARKER = b"Run /init as init process"
# The test init's first line: the first thing guest user space prints (needs hardware KVM or
# the nested lane).
USER_MARKER = b"KUML-INIT: started"
IDLE_MARKER = b"Waiting for root device"
QEMU = "qemu-system-x86_64"


def kuml_bin():
    for p in (os.environ.get("KUML"), "/work/target-bench/release/kuml",
              os.path.join(ROOT, "target/release/kuml")):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("kbench: no kuml binary (set KUML=, or cargo build --release -p kuml)")


def pvm_opts():
    out = subprocess.run([os.path.join(ROOT, "resources/pvm-cmdline.sh")],
                         capture_output=True, text=True).stdout.split()
    return out


def is_pvm():
    return bool(pvm_opts())


# ---------------------------------------------------------------- command lines

def kuml_cmd(kernel, mem_mib, initrd=None, append=(), uml_dir=None):
    # Serial console on ttyS0 (ssl0 on stdout) as for QEMU; no other consoles or serial
    # lines, as QEMU's -nodefaults. The guest options come last (UML style).
    cmd = [kuml_bin(), f"kernel={kernel}", f"mem={mem_mib}M", "noreboot",
           "con=none", "ssl=none", "ssl0=fd:0,fd:1"]
    if uml_dir:
        cmd.append(f"uml_dir={uml_dir}")
    if initrd:
        cmd.append(f"initrd={initrd}")
    return cmd + list(append)


def uml_bin():
    """Debian's UML (package user-mode-linux), the anchor kuml replaces, or None."""
    return os.environ.get("UML") or shutil.which("linux.uml")


def uml_cmd(mem_mib, initrd, umid, uml_dir):
    # UML boots its own kernel (Debian's 6.1 UML build) from the same initramfs; con0 on
    # stdout, every other console and serial line off.
    return [uml_bin(), f"mem={mem_mib}M", f"initrd={initrd}", "con=null", "con0=fd:0,fd:1",
            "ssl=null", f"umid={umid}", f"uml_dir={uml_dir}"]


def uml_version():
    deb = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "user-mode-linux"],
                         capture_output=True, text=True).stdout.strip()
    return f"Debian user-mode-linux {deb}" if deb else uml_bin()


def qemu_cmd(kernel, mem_mib, initrd=None, append=(), serial=True, exit_port=False):
    cmd = [QEMU, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", str(mem_mib),
           "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-kernel", kernel]
    if serial:
        cmd += ["-serial", "stdio"]
    if exit_port:
        cmd += ["-device", "isa-debug-exit,iobase=0xf4,iosize=1"]
    if initrd:
        cmd += ["-initrd", initrd]
    if append:
        cmd += ["-append", " ".join(append)]
    return cmd


# ---------------------------------------------------------------- helpers

def med(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, unit="s", nd=3):
    if x is None:
        return "n/a"
    return f"{x:.{nd}f} {unit}".strip()


def stop(p):
    if getattr(p, "own_group", False):
        # UML runs as a process tree (its ptrace helpers): stop all of it.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        return
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start_until(cmd, marker, timeout, own_group=False):
    """Starts cmd, reads its console as it arrives; returns (proc, seconds to marker or None,
    console bytes). The process is left running (in a process group of its own with
    own_group, which stop() then kills whole)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=own_group)
    p.own_group = own_group
    buf = b""
    fd = p.stdout.fileno()
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return p, None, buf
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        d = os.read(fd, 65536)
        now = time.monotonic()
        if not d:
            return p, None, buf
        # search only the new bytes plus an overlap, so a long console stays cheap
        tail = buf[-len(marker):] + d
        buf += d
        if marker in tail:
            return p, now - t0, buf


def snapshot(paths, into):
    """Copies the guest images into a private directory, so that a rebuild of build/guest
    during a long run cannot mix two kernels; returns the copies' paths and a description."""
    out, desc = [], {}
    for p in paths:
        q = os.path.join(into, os.path.basename(p))
        shutil.copyfile(p, q)
        st = os.stat(p)
        desc[os.path.basename(p)] = {"bytes": st.st_size, "mtime_utc": time.strftime(
            "%Y-%m-%d %H:%M:%S", time.gmtime(st.st_mtime))}
        out.append(q)
    return out, desc


def table(title, rows, head=("", "kuml", "QEMU microvm", "kuml/QEMU")):
    print(f"\n{title}")
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  " + "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))


def dump(path, obj):
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)


# ---------------------------------------------------------------- boot

def cmd_boot(a):
    kernels = [("vmlinux", os.path.join(ROOT, "build/guest/vmlinux"))]
    if a.bzimage:
        kernels.append(("bzImage", os.path.join(ROOT, "build/guest/bzImage")))
    rounds_of = {"vmlinux": a.rounds, "bzImage": a.bz_rounds or a.rounds}
    initrd = os.path.join(ROOT, "build/guest/initramfs.cpio.gz")
    append = ["console=ttyS0"] + pvm_opts()
    marker = USER_MARKER if a.user_space else BOOT_MARKER
    res = {"figure": "boot", "rounds": a.rounds, "mem_mib": a.mem,
           "marker": marker.decode(), "guest_cmdline": " ".join(append), "kernels": {}}
    rows = []
    udir = tempfile.mkdtemp(prefix="kbench-")
    try:
        copies, res["images"] = snapshot([k for _, k in kernels] + [initrd], udir)
        kernels = [(n, c) for (n, _), c in zip(kernels, copies)]
        initrd = copies[-1]
        for name, kpath in kernels:
            times = {"kuml": [], "qemu": []}
            guest = {"kuml": [], "qemu": []}  # the guest's printk clock at the marker
            fails = {"kuml": 0, "qemu": 0}
            for i in range(rounds_of[name]):
                # alternate who goes first, so a slow phase of the host hits both alike
                order = ("kuml", "qemu") if i % 2 == 0 else ("qemu", "kuml")
                for vmm in order:
                    cmd = (kuml_cmd(kpath, a.mem, initrd, append, udir) if vmm == "kuml"
                           else qemu_cmd(kpath, a.mem, initrd, append))
                    p, t, out = start_until(cmd, marker, a.timeout)
                    stop(p)
                    if t is None:
                        fails[vmm] += 1
                        sys.stderr.write(f"boot {name} {vmm} round {i}: no marker (exit status "
                                         f"{p.returncode}); last output:\n"
                                         + out[-800:].decode(errors="replace") + "\n")
                    else:
                        times[vmm].append(t)
                        g = re.findall(rb"\[\s*(\d+\.\d+)\] " + re.escape(BOOT_MARKER), out)
                        if g:
                            guest[vmm].append(float(g[-1]))
                    print(f"  {name} round {i + 1}/{rounds_of[name]} {vmm}: {fmt(t)}", flush=True)
            mk, mq = med(times["kuml"]), med(times["qemu"])
            res["kernels"][name] = {"rounds": rounds_of[name], "kuml_s": times["kuml"], "qemu_s": times["qemu"],
                                    "kuml_median_s": mk, "qemu_median_s": mq,
                                    "ratio": ratio(mk, mq), "failures": fails,
                                    "kuml_guest_clock_s": guest["kuml"],
                                    "qemu_guest_clock_s": guest["qemu"],
                                    "kuml_guest_clock_median_s": med(guest["kuml"]),
                                    "qemu_guest_clock_median_s": med(guest["qemu"])}
            rows.append((f"{name} ({rounds_of[name]} rounds)", fmt(mk), fmt(mq), fmt(ratio(mk, mq), "", 2)))
            gk, gq = med(guest["kuml"]), med(guest["qemu"])
            rows.append(("  guest printk clock at the marker", fmt(gk), fmt(gq), fmt(ratio(gk, gq), "", 2)))
        if a.user_space:
            res["uml"] = {"not_measured": "--user-space: kuml and QEMU microvm only"}
        elif uml_bin():
            res["uml"] = boot_uml(a, initrd, udir, med(res["kernels"]["vmlinux"]["kuml_s"]))
            u = res["uml"]
            rows.append((f"UML anchor: linux.uml ({a.rounds} rounds; kuml/UML)", fmt(u["kuml_vmlinux_median_s"]),
                         f"UML {fmt(u['uml_median_s'])}", fmt(u["ratio"], "", 2)))
        else:
            res["uml"] = {"not_measured": "linux.uml not found (package user-mode-linux)"}
    finally:
        shutil.rmtree(udir, ignore_errors=True)
    table(f"boot: process start -> '{marker.decode()}' (medians, "
          f"{a.mem} MiB; target kuml/QEMU <= 0.5)", rows)
    dump(a.json, res)


def boot_uml(a, initrd, udir, kuml_median):
    """UML, the system kuml replaces: process start -> the same marker, from the same
    initramfs. UML runs its own kernel under ptrace, without KVM."""
    times, fails = [], 0
    for i in range(a.rounds):
        p, t, out = start_until(uml_cmd(a.mem, initrd, f"kbench-uml{i}", udir), BOOT_MARKER,
                                a.timeout, own_group=True)
        stop(p)
        if t is None:
            fails += 1
            sys.stderr.write(f"boot UML round {i}: no marker; last output:\n"
                             + out[-800:].decode(errors="replace") + "\n")
        else:
            times.append(t)
        print(f"  UML round {i + 1}/{a.rounds}: {fmt(t)}", flush=True)
    mu = med(times)
    return {"uml": uml_version(), "rounds": a.rounds, "uml_s": times, "uml_median_s": mu,
            "failures": fails, "kuml_vmlinux_median_s": kuml_median,
            "ratio": ratio(kuml_median, mu)}


# ---------------------------------------------------------------- first instruction

def cmd_first(a):
    tmp = tempfile.mkdtemp(prefix="kbench-")
    try:
        tiny = os.path.join(tmp, "tiny.elf")
        subprocess.run([sys.executable, os.path.join(ROOT, "bench/mktiny.py"), tiny], check=True)
        udir = os.path.join(tmp, "uml")
        cmds = {"kuml": (kuml_cmd(tiny, a.mem, uml_dir=udir), 0),
                "qemu": (qemu_cmd(tiny, a.mem, serial=False, exit_port=True), 1)}

        def once(vmm):
            cmd, want = cmds[vmm]
            t0 = time.monotonic()
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            t = time.monotonic() - t0
            if r.returncode != want:
                sys.exit(f"first: {vmm} exited {r.returncode}, wanted {want}: "
                         + r.stderr.decode(errors="replace")[-500:])
            return t

        for vmm in cmds:  # warm the page cache (binaries, libraries)
            once(vmm)
        times = {"kuml": [], "qemu": []}
        for i in range(a.rounds):
            for vmm in (("kuml", "qemu") if i % 2 == 0 else ("qemu", "kuml")):
                times[vmm].append(once(vmm))
        rate = {}
        for vmm in cmds:
            t0 = time.monotonic()
            for _ in range(a.starts):
                once(vmm)
            rate[vmm] = a.starts / (time.monotonic() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mk, mq = med(times["kuml"]), med(times["qemu"])
    res = {"figure": "first_instruction", "rounds": a.rounds, "mem_mib": a.mem,
           "kuml_s": times["kuml"], "qemu_s": times["qemu"], "kuml_median_s": mk,
           "qemu_median_s": mq, "ratio": ratio(mk, mq),
           "starts": a.starts, "kuml_vms_per_s": rate["kuml"], "qemu_vms_per_s": rate["qemu"],
           "rate_ratio": ratio(rate["kuml"], rate["qemu"])}
    table(f"tiny ELF (mov al,0; out 0xf4,al; hlt), {a.mem} MiB, median of {a.rounds}", [
        ("process start -> exit (target kuml <= 5 ms)", fmt(mk * 1e3, "ms", 1),
         fmt(mq * 1e3, "ms", 1), fmt(ratio(mk, mq), "", 2)),
        (f"VMs started per second ({a.starts} sequential)", f"{rate['kuml']:.1f}/s",
         f"{rate['qemu']:.1f}/s", fmt(res["rate_ratio"], "", 2)),
    ])
    dump(a.json, res)


# ---------------------------------------------------------------- memory

def smaps(pid, mem_kib):
    """Returns (rollup dict in KiB, guest RAM dict in KiB or None). Guest RAM: the anonymous
    mappings whose size is the guest memory size (up to 4 MiB more for alignment)."""
    rollup = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                rollup[m.group(1)] = int(m.group(2))
    guest = None
    with open(f"/proc/{pid}/smaps") as f:
        text = f.read()
    for blk in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        head = blk.split("\n", 1)[0].split()
        path = head[5] if len(head) > 5 else ""
        if path and not path.startswith("[anon") and not path.startswith("/memfd:"):
            continue
        v = {k: int(n) for k, n in re.findall(r"^(\w+):\s+(\d+) kB", blk, re.M)}
        if mem_kib <= v.get("Size", 0) <= mem_kib + 4096:
            if guest is None:
                guest = {k: 0 for k in v}
            for k in v:
                guest[k] = guest.get(k, 0) + v[k]
    return rollup, guest


def meminfo():
    with open("/proc/meminfo") as f:
        return {m.group(1): int(m.group(2)) for m in
                (re.match(r"(\w+):\s+(\d+)", l) for l in f) if m}


def cmd_memory(a):
    kernel = os.path.join(ROOT, "build/guest/vmlinux")
    # No initrd and a root device that never appears: the guest kernel finishes its boot and
    # idles in rootwait. This needs no guest user space, so it works on PVM hosts too.
    append = ["console=ttyS0", "root=/dev/vdz", "rootwait"] + pvm_opts()
    mem_kib = a.mem * 1024
    res = {"figure": "memory", "mem_mib": a.mem, "rounds": a.rounds, "settle_s": a.settle,
           "idle_marker": IDLE_MARKER.decode(), "guest_cmdline": " ".join(append)}
    udir = tempfile.mkdtemp(prefix="kbench-")
    samples = {"kuml": [], "qemu": []}
    try:
        (kernel,), res["images"] = snapshot([kernel], udir)
        for i in range(a.rounds):
            for vmm in (("kuml", "qemu") if i % 2 == 0 else ("qemu", "kuml")):
                cmd = (kuml_cmd(kernel, a.mem, None, append, udir) if vmm == "kuml"
                       else qemu_cmd(kernel, a.mem, None, append))
                before = meminfo()
                p, t, out = start_until(cmd, IDLE_MARKER, a.timeout)
                try:
                    if t is None:
                        sys.stderr.write(f"memory {vmm}: guest did not reach idle (exit status "
                                         f"{p.poll()}); last output:\n"
                                         + out[-800:].decode(errors="replace") + "\n")
                        continue
                    time.sleep(a.settle)
                    roll, guest = smaps(p.pid, mem_kib)
                    after = meminfo()
                finally:
                    stop(p)
                if guest is None:
                    sys.stderr.write(f"memory {vmm}: no guest RAM mapping of {a.mem} MiB found\n")
                    continue
                priv = lambda d: d.get("Private_Clean", 0) + d.get("Private_Dirty", 0)
                s = {"rss_kib": roll["Rss"], "pss_kib": roll["Pss"],
                     "guest_rss_kib": guest["Rss"],
                     "overhead_rss_kib": roll["Rss"] - guest["Rss"],
                     "overhead_private_kib": priv(roll) - priv(guest),
                     "guest_thp_kib": guest.get("AnonHugePages", 0),
                     "sec_page_tables_delta_kib": (after.get("SecPageTables", 0)
                                                   - before.get("SecPageTables", 0))}
                samples[vmm].append(s)
                print(f"  round {i + 1}/{a.rounds} {vmm}: " + ", ".join(
                    f"{k}={v}" for k, v in s.items()), flush=True)
    finally:
        shutil.rmtree(udir, ignore_errors=True)
    host = meminfo()
    rows = []
    for vmm in ("kuml", "qemu"):
        res[vmm] = {"samples": samples[vmm]}
        for k in ("rss_kib", "guest_rss_kib", "overhead_rss_kib", "overhead_private_kib",
                  "guest_thp_kib", "sec_page_tables_delta_kib"):
            res[vmm][k] = med([s[k] for s in samples[vmm]])
        o, g = res[vmm]["overhead_private_kib"], res[vmm]["guest_rss_kib"]
        # marginal cost of one more idle VM: its private VMM memory + the guest RAM it touched
        # (shared library pages are paid once per host; kernel-side KVM memory is not in RSS)
        res[vmm]["per_vm_kib"] = (o + g) if o is not None and g is not None else None
        res[vmm]["vms_per_host"] = (int(host["MemTotal"] // res[vmm]["per_vm_kib"])
                                    if res[vmm]["per_vm_kib"] else None)
    res["host_memtotal_kib"] = host["MemTotal"]
    mib = lambda k: None if k is None else k / 1024
    for label, k in (("VMM overhead, RSS (target kuml <= 3 MiB)", "overhead_rss_kib"),
                     ("VMM overhead, private", "overhead_private_kib"),
                     ("guest RAM touched (RSS of the RAM mapping)", "guest_rss_kib"),
                     ("  of which transparent huge pages", "guest_thp_kib"),
                     ("process RSS", "rss_kib"),
                     ("host SecPageTables delta (KVM page tables)", "sec_page_tables_delta_kib")):
        vk, vq = mib(res["kuml"][k]), mib(res["qemu"][k])
        r = ratio(vk, vq) if k != "sec_page_tables_delta_kib" else None
        rows.append((label, fmt(vk, "MiB", 1), fmt(vq, "MiB", 1), fmt(r, "", 2)))
    rows.append((f"idle {a.mem} MiB VMs in {host['MemTotal'] // 1024} MiB (estimate)",
                 str(res["kuml"]["vms_per_host"]), str(res["qemu"]["vms_per_host"]),
                 fmt(ratio(res["kuml"]["vms_per_host"], res["qemu"]["vms_per_host"]), "", 2)))
    table(f"memory: idle guest ({a.mem} MiB, kernel waiting in rootwait, {a.settle} s after "
          f"'{IDLE_MARKER.decode()}'), median of {a.rounds}", rows)
    dump(a.json, res)


# ---------------------------------------------------------------- machine

def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return None


def other_vmms():
    """How many kuml or QEMU processes run on the host now (other users' VMs compete for CPU)."""
    n = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        n += comm == "kuml" or comm.startswith("qemu-system")
    return n


def cmd_machine(a):
    cpu = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dirty = sh("git", "status", "--porcelain", "--", "vmm", "devices", "ubd", "netdev",
               "mconsole", "Cargo.lock")
    res = {"figure": "machine", "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "cpu": cpu, "cores": os.cpu_count(), "memtotal_mib": meminfo()["MemTotal"] // 1024,
           "host_kernel": os.uname().release, "pvm": is_pvm(),
           "kvm": "PVM (kvm_pvm, guest kernel code emulated)" if is_pvm() else "hardware (VT-x/AMD-V)",
           "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
           "other_vmms_running": other_vmms(),
           "qemu": (sh(QEMU, "--version") or "").split("\n")[0],
           "kuml_commit": sh("git", "rev-parse", "--short", "HEAD")
           + (" (+uncommitted changes)" if dirty else ""),
           "kuml_binary": kuml_bin(),
           "guest_kernel": (open(os.path.join(ROOT, "build/guest/kernel.release")).read().strip()
                            if os.path.exists(os.path.join(ROOT, "build/guest/kernel.release"))
                            else None)}
    for k, v in res.items():
        print(f"  {k}: {v}")
    dump(a.json, res)


# ---------------------------------------------------------------- report

def cmd_report(a):
    figs = {}
    for path in a.inputs:
        try:
            with open(path) as f:
                d = json.load(f)
            figs[d["figure"]] = d
        except (OSError, ValueError, KeyError) as e:
            sys.stderr.write(f"report: skipping {path}: {e}\n")
    for s in a.skipped:
        name, why = s.split("=", 1)
        figs.setdefault("not_measured", {})[name] = why
    if "machine" in figs and not figs["machine"].get("loadavg_at_end"):
        figs["machine"]["loadavg_at_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    with open(a.out + ".json", "w") as f:
        json.dump(figs, f, indent=2)
    L = []
    m = figs.get("machine", {})
    L.append(f"# kuml benchmarks, {m.get('date_utc', '?')} UTC\n")
    L.append("| machine | |\n|---|---|")
    for k in ("cpu", "cores", "memtotal_mib", "host_kernel", "kvm", "qemu", "kuml_commit",
              "guest_kernel", "loadavg", "other_vmms_running", "loadavg_at_end"):
        L.append(f"| {k} | {m.get(k)} |")
    L.append("")
    L.append("Medians of the rounds below, host wall clock. Ratio = kuml / QEMU microvm.\n")
    L.append("| figure | kuml | QEMU microvm | kuml/QEMU | target |\n|---|---|---|---|---|")
    b = figs.get("boot")
    if b:
        for name, k in b["kernels"].items():
            L.append(f"| start -> `Run /init` ({name}, {b['mem_mib']} MiB, {k.get('rounds', b['rounds'])} rounds) "
                     f"| {fmt(k['kuml_median_s'])} | {fmt(k['qemu_median_s'])} "
                     f"| {fmt(k['ratio'], '', 2)} | ratio <= 0.5 |")
            if k.get("kuml_guest_clock_median_s") is not None:
                gk, gq = k["kuml_guest_clock_median_s"], k["qemu_guest_clock_median_s"]
                L.append(f"| &nbsp; guest printk clock at that line ({name}) | {fmt(gk)} "
                         f"| {fmt(gq)} | {fmt(ratio(gk, gq), '', 2)} | |")
        if "bzImage" not in b["kernels"]:
            L.append("| start -> `Run /init` (bzImage) | not run (--bzimage not given) | | | ratio <= 0.5 |")
        u = b.get("uml", {})
        if u.get("uml_median_s") is not None:
            L.append(f"| start -> `Run /init`, **UML** ({u['uml']}: its own kernel, same initramfs, "
                     f"{u['rounds']} rounds) against kuml's vmlinux boot | {fmt(u['kuml_vmlinux_median_s'])} "
                     f"| UML: {fmt(u['uml_median_s'])} | kuml/UML {fmt(u['ratio'], '', 2)} | |")
        elif u.get("not_measured"):
            L.append(f"| start -> `Run /init`, UML | not measured: {u['not_measured']} | | | |")
    fi = figs.get("first_instruction")
    if fi:
        L.append(f"| start -> first guest instruction -> exit (tiny ELF, {fi['rounds']} rounds) "
                 f"| {fmt(fi['kuml_median_s'] * 1e3, 'ms', 1)} "
                 f"| {fmt(fi['qemu_median_s'] * 1e3, 'ms', 1)} | {fmt(fi['ratio'], '', 2)} | kuml <= 5 ms |")
        L.append(f"| VMs started per second ({fi['starts']} sequential tiny-ELF starts) "
                 f"| {fi['kuml_vms_per_s']:.1f} | {fi['qemu_vms_per_s']:.1f} "
                 f"| {fmt(fi['rate_ratio'], '', 2)} | |")
    mm = figs.get("memory")
    if mm:
        mib = lambda k: None if k is None else k / 1024
        for label, k, tgt in (("VMM overhead (RSS - guest RAM RSS)", "overhead_rss_kib", "kuml <= 3 MiB"),
                              ("VMM overhead, private pages", "overhead_private_kib", ""),
                              ("guest RAM touched", "guest_rss_kib", ""),
                              ("host SecPageTables delta", "sec_page_tables_delta_kib", "")):
            vk, vq = mib(mm["kuml"][k]), mib(mm["qemu"][k])
            r = ratio(vk, vq) if k != "sec_page_tables_delta_kib" else None
            L.append(f"| {label}, idle {mm['mem_mib']} MiB guest | {fmt(vk, 'MiB', 1)} "
                     f"| {fmt(vq, 'MiB', 1)} | {fmt(r, '', 2)} | {tgt} |")
        L.append(f"| idle {mm['mem_mib']} MiB VMs per host (estimate, {mm['host_memtotal_kib'] // 1024} MiB) "
                 f"| {mm['kuml']['vms_per_host'] and int(mm['kuml']['vms_per_host'])} "
                 f"| {mm['qemu']['vms_per_host'] and int(mm['qemu']['vms_per_host'])} "
                 f"| {fmt(ratio(mm['kuml']['vms_per_host'], mm['qemu']['vms_per_host']), '', 2)} | |")
    for name in ("disk", "net", "hotplug", "hostfs"):
        d = figs.get(name)
        if d and "rows" in d:  # scripts from other issues: a list of row dicts
            for r in d["rows"]:
                rr = r.get("ratio")
                rr = fmt(rr, "", 2) if isinstance(rr, (int, float)) else (rr or "n/a")
                L.append(f"| {r.get('label')} | {r.get('kuml')} | {r.get('qemu')} | "
                         f"{rr} | {r.get('target', '')} |")
    for name, why in figs.get("not_measured", {}).items():
        L.append(f"| {name} | not measured: {why} | | | |")
    L.append("")
    if m.get("pvm"):
        L.append("PVM host: guest kernel code is emulated, so boot figures measure the emulator "
                 "more than the VMM; guest user space cannot run, so the idle guest is a kernel "
                 "waiting in `rootwait`, and PVM shadow page tables and other kernel-side KVM "
                 "memory are not in any RSS (the SecPageTables delta is shown where the host "
                 "kernel counts it). The VMs-per-host figure is an estimate from the measured "
                 "per-VM memory, not a count of VMs actually started.\n")
    L.append("Raw rounds: the .json file next to this one.\n")
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(L))
    print(f"wrote {a.out}.md and {a.out}.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("boot")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mem", type=int, default=128)
    p.add_argument("--bzimage", action="store_true", help="also boot the bzImage (slow on PVM)")
    p.add_argument("--user-space", action="store_true",
                   help=f"time to the init's first line ({USER_MARKER.decode()}) instead of "
                        f"the kernel's handover (needs guest user space: the nested lane)")
    p.add_argument("--bz-rounds", type=int, help="rounds for the bzImage (default: --rounds)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json")
    p.set_defaults(fn=cmd_boot)
    p = sub.add_parser("first")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--starts", type=int, default=20)
    p.add_argument("--mem", type=int, default=128)
    p.add_argument("--json")
    p.set_defaults(fn=cmd_first)
    p = sub.add_parser("memory")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--mem", type=int, default=64)
    p.add_argument("--settle", type=float, default=3)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json")
    p.set_defaults(fn=cmd_memory)
    p = sub.add_parser("machine")
    p.add_argument("--json")
    p.set_defaults(fn=cmd_machine)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True, help="path without .md/.json")
    p.add_argument("--skipped", action="append", default=[], metavar="NAME=WHY")
    p.add_argument("inputs", nargs="*")
    p.set_defaults(fn=cmd_report)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
