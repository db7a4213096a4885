#!/usr/bin/env python3
"""Exercise the guest kernel and its in-kernel test agent under QEMU (reference VMM).

    resources/test-agent-qemu.py [--machine microvm|pc] [--image vmlinux|bzImage]
                                 [--scenario full|exec-init|panic|cad|boot] [--guest-dir DIR]

microvm: console on COM1 (ttyS0), agent on a virtconsole (hvc0), data.ext4 on virtio-blk-device.
pc:      console on COM1, agent on COM2 (ttyS1), data.ext4 on virtio-blk-pci, i8042 present.
Scenarios:
  full      protocol + block I/O: echo/uname/ls/mkdir/mount/read/write/fill/stat/fsync/sync/
            umount/remount/sysrq, then poweroff (QEMU must exit)
  exec-init agent hands over to user space ("Run /init as init process")
  panic     agent panics the kernel with a message (pc: pvpanic must report it to QEMU)
  cad       (pc) QEMU injects ctrl-alt-delete on the i8042 -> kernel restarts
  boot      only measure launch -> agent ready, then poweroff
  rootfs    no initramfs: root=/dev/vda (rootfs.ext4), data.ext4 as vdb; check the root
            tree through the agent, then exec-init ("Run /sbin/init as init process")
Adds resources/pvm-cmdline.sh output on PVM hosts. Exit 0 when every check passed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.machinery import SourceFileLoader

HERE = os.path.dirname(os.path.abspath(__file__))
ac = SourceFileLoader("agent_client", os.path.join(HERE, "agent-client.py")).load_module()

failures = []


def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def wait_log(path, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                if text in f.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--machine", default="microvm", choices=["microvm", "pc"])
    ap.add_argument("--image", default="vmlinux", choices=["vmlinux", "bzImage"])
    ap.add_argument("--scenario", default="full",
                    choices=["full", "exec-init", "panic", "cad", "boot", "rootfs"])
    ap.add_argument("--guest-dir", default=os.environ.get(
        "KUML_GUEST_DIR", os.path.join(os.path.dirname(HERE), "build", "guest")))
    ap.add_argument("--mem", default="256")
    ap.add_argument("--initrd", default="initramfs.cpio",
                    help="initramfs.cpio (fast on PVM) or initramfs.cpio.gz")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--extra", default="", help="extra kernel command line")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir even if all passed")
    o = ap.parse_args()

    g = o.guest_dir
    tmp = tempfile.mkdtemp(prefix="kuml-agent-test.")
    sock = os.path.join(tmp, "agent.sock")
    mon = os.path.join(tmp, "mon.sock")
    con = os.path.join(tmp, "console.log")
    data = os.path.join(tmp, "data.ext4")
    subprocess.run(["cp", "--sparse=always", os.path.join(g, "data.ext4"), data], check=True)
    pvm = subprocess.run([os.path.join(HERE, "pvm-cmdline.sh")],
                         capture_output=True, text=True).stdout.strip()
    cpu = subprocess.run([os.path.join(HERE, "qemu-cpu.sh")],
                         capture_output=True, text=True).stdout.strip()

    rootfs = os.path.join(tmp, "rootfs.ext4")
    q = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", cpu, "-m", o.mem, "-smp", "1",
         "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
         "-kernel", os.path.join(g, o.image)]
    if o.scenario == "rootfs":
        subprocess.run(["cp", "--sparse=always", os.path.join(g, "rootfs.ext4"), rootfs], check=True)
        q += ["-drive", f"id=r0,file={rootfs},format=raw,if=none,cache=unsafe"]
        o.extra = ("root=/dev/vda rw " + o.extra).strip()
    else:
        q += ["-initrd", os.path.join(g, o.initrd)]
    q += [
         "-serial", "file:" + con,
         "-chardev", f"socket,id=ag,path={sock},server=on,wait=off",
         "-monitor", f"unix:{mon},server=on,wait=off",
         "-drive", f"id=d0,file={data},format=raw,if=none,cache=unsafe"]
    if o.machine == "microvm":
        agent_tty = "hvc0"
        q = q[:1] + ["-M", "microvm"] + q[1:] + (
            ["-device", "virtio-blk-device,drive=r0"] if o.scenario == "rootfs" else []) + [
            "-device", "virtio-blk-device,drive=d0",
            "-device", "virtio-serial-device", "-device", "virtconsole,chardev=ag"]
    else:
        agent_tty = "ttyS1"
        q = q[:1] + ["-M", "pc"] + q[1:] + [
            "-serial", "chardev:ag", "-device", "virtio-blk-pci,drive=d0",
            # ISA pvpanic, described in the DSDT as ACPI QEMU0001 (like kuml's)
            "-device", "pvpanic", "-action", "panic=exit-failure"]
    cmdline = f"console=ttyS0 panic=-1 kuml.agent={agent_tty} {pvm} {o.extra}".strip()
    q += ["-append", cmdline]
    print("cmdline:", cmdline, flush=True)

    t0 = time.monotonic()
    qemu = subprocess.Popen(q, stdin=subprocess.DEVNULL)
    a = None
    try:
        a = ac.Agent.connect_unix(sock, timeout=30)
        ready = a.wait_ready(timeout=o.timeout)
        t_ready = time.monotonic() - t0
        print(f"agent ready after {t_ready:.1f} s: {ready}", flush=True)
        check(a.kind == "kernel", "kernel agent announced itself")
        check(wait_log(con, f"kuml-agent: ready on {agent_tty}", 10), "ready line on the console")

        if o.scenario in ("full", "boot"):
            if o.scenario == "full":
                full(a, con)
            t = time.monotonic()
            a.request("poweroff", timeout=30)
            try:
                rc = qemu.wait(timeout=120)
                check(True, f"poweroff: QEMU exited (rc={rc}) after {time.monotonic() - t:.1f} s")
            except subprocess.TimeoutExpired:
                check(False, "poweroff: QEMU exited")
        elif o.scenario == "exec-init":
            check(a.call("exec-init") == "", "exec-init acknowledged")
            check(wait_log(con, "Run /init as init process", 60), "kernel ran /init")
            # on PVM hosts user space cannot run: the kernel then panics ("Attempted to kill init")
            wait_log(con, "KUML-INIT: started", 20)
        elif o.scenario == "rootfs":
            check(wait_log(con, "VFS: Mounted root (ext4 filesystem)", 10), "ext4 root mounted")
            sbin = a.call("ls", "/sbin").split()
            check("init" in sbin and "kuml-uagent" in sbin, "rootfs has /sbin/init and kuml-uagent")
            check(a.read_bytes("/sbin/init", 0, 9) == b"#!/bin/sh", "read /sbin/init")
            check(int(a.call("stat", "/dev/vdb")) == 64 << 20, "data disk is vdb")
            check(a.call("exec-init") == "", "exec-init acknowledged")
            check(wait_log(con, "Run /sbin/init as init process", 60), "kernel ran /sbin/init")
            wait_log(con, "KUML-INIT: started", 20)
        elif o.scenario == "panic":
            a.request("panic", "kuml", "test", "panic", timeout=30)
            check(wait_log(con, "Kernel panic - not syncing: kuml test panic", 60),
                  "panic message on the console")
            try:
                rc = qemu.wait(timeout=60)
                check(True, f"QEMU exited after the panic (rc={rc})")
                if o.machine == "pc":
                    check(rc == 1, "pvpanic reported the panic (QEMU panic=exit-failure -> rc 1)")
            except subprocess.TimeoutExpired:
                check(False, "QEMU exited after the panic")
        elif o.scenario == "cad":
            import socket
            m = socket.socket(socket.AF_UNIX)
            m.connect(mon)
            m.sendall(b"sendkey ctrl-alt-delete\n")
            check(wait_log(con, "reboot: Restarting system", 120), "Ctrl-Alt-Del restarted the kernel")
            try:
                qemu.wait(timeout=60)
                check(True, "QEMU exited on the reset (-no-reboot)")
            except subprocess.TimeoutExpired:
                check(False, "QEMU exited on the reset")
    except (ac.AgentTimeout, ConnectionError, OSError, ac.AgentError) as e:
        check(False, f"agent session: {e!r}")
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        if a:
            a.close()
    print(f"console log: {con}" + ("" if failures or o.keep else " (removed: all passed)"))
    if failures:
        print("--- console tail ---")
        with open(con, errors="replace") as f:
            print("".join(f.readlines()[-40:]))
        print(f"{len(failures)} FAILED: {failures}")
        return 1
    print("ALL PASSED")
    if not o.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def full(a, con):
    c = a.call
    check(c("echo", "hello", "kuml") == "hello kuml", "echo")
    u = c("uname").split()
    check(len(u) == 3 and u[0] == "Linux" and u[1].endswith("-kuml"), f"uname {u}")
    ok, p, _ = a.request("bogus")
    check(not ok and p.startswith("EINVAL"), "unknown command -> err EINVAL")
    ok, p, _ = a.request("read", "/nonexistent", 0, 1)
    check(not ok and p == "ENOENT", f"read of a missing file -> err ENOENT ({p})")
    check(c("mkdir", "/data") == "", "mkdir /data")
    ok, p, _ = a.request("mkdir", "/data")
    check(not ok and p == "EEXIST", "mkdir again -> EEXIST")
    ls_dev = c("ls", "/dev").split()
    check("vda" in ls_dev, f"ls /dev lists vda ({len(ls_dev)} entries)")
    check(int(c("stat", "/dev/vda")) == 64 << 20, "stat /dev/vda = 64 MiB (device size)")
    check(c("mount", "/dev/vda", "/data", "ext4", "-") == "", "mount /dev/vda /data ext4")
    names = c("ls", "/data").split()
    check({"hello.txt", "pattern.bin", "dir"} <= set(names), f"ls /data {names}")
    check(a.read_bytes("/data/hello.txt", 0, 100) == b"hello from kuml data disk\n", "read hello.txt")
    check(int(c("stat", "/data/pattern.bin")) == 65536, "stat pattern.bin")
    check(a.read_bytes("/data/pattern.bin", 250, 10) == bytes((250 + i) % 256 for i in range(10)),
          "read pattern.bin at an offset")
    check(len(a.read_bytes("/data/pattern.bin", 0, 32768)) == 32768, "read 32 KiB (max)")
    ok, p, _ = a.request("read", "/data/pattern.bin", 0, 32769)
    check(not ok and p.startswith("E2BIG"), "read > 32 KiB -> E2BIG")
    blob = bytes(range(256)) * 16
    check(a.write_bytes("/data/new.bin", 100, blob) == len(blob), "write 4 KiB at offset 100")
    check(a.read_bytes("/data/new.bin", 100, len(blob)) == blob, "read back the write")
    check(a.read_bytes("/data/new.bin", 0, 100) == bytes(100), "hole before the write reads zeros")
    t = time.monotonic()
    check(c("fill", "/data/big", 2, "5a", timeout=300) == str(2 << 20), "fill 2 MiB")
    print(f"     fill 2 MiB + fsync took {time.monotonic() - t:.1f} s", flush=True)
    check(int(c("stat", "/data/big")) == 2 << 20, "stat after fill")
    check(a.read_bytes("/data/big", (2 << 20) - 4, 8) == b"\x5a" * 4, "tail of the filled file")
    check(c("fsync", "/data/new.bin") == "", "fsync")
    check(c("sync") == "", "sync")
    check(c("umount", "/data") == "", "umount")
    ok, p, _ = a.request("stat", "/data/new.bin")
    check(not ok and p == "ENOENT", "file gone after umount")
    check(c("mount", "/dev/vda", "/data", "ext4", "ro") == "", "mount again read-only")
    check(a.read_bytes("/data/new.bin", 100, len(blob)) == blob, "write persisted across umount")
    ok, p, _ = a.request("write", "/data/x", 0, "00")
    check(not ok and p == "EROFS", f"write on a ro mount -> EROFS ({p})")
    check(c("umount", "/data") == "", "umount ro")
    check(c("mount", "proc", "/proc", "proc", "-") == "", "mount proc")
    cmdline = bytes.fromhex(c("read", "/proc/cmdline", 0, 4096)).decode()
    check("kuml.agent=" in cmdline, "read /proc/cmdline")
    check(c("sysrq", "h") == "", "sysrq h")
    check(wait_log(con, "sysrq: HELP", 30), "sysrq help on the console")
    ok, p, _ = a.request("write", "/data/odd", 0, "abc")
    check(not ok and p.startswith("EINVAL"), "odd-length hex -> EINVAL")
    check(a.wait_ready(timeout=30).startswith("KAGENT ready kernel"), "empty line repeats ready")


if __name__ == "__main__":
    sys.exit(main())
