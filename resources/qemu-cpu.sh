#!/bin/sh
# Print the `-cpu` model for a QEMU guest on this host's /dev/kvm: tests and benchmarks that
# compare kuml with QEMU use it (`-accel kvm -cpu "$(sh resources/qemu-cpu.sh)"`).
#   PVM (detected as in pvm-cmdline.sh): `host,-arch-capabilities`. PVM's KVM refuses the
#   IA32_ARCH_CAPABILITIES value QEMU derives for `-cpu host` ("failed to set MSR 0x10a to
#   0x69", then an assertion aborts QEMU before the guest runs); without the MSR the guest
#   only loses a hint about CPU vulnerabilities (PVM guests run with mitigations=off anyway).
#   Elsewhere: `host`.
if [ -d /sys/module/kvm_pvm ] ||
   { [ -e /dev/kvm ] && ! grep -qwE 'vmx|svm' /proc/cpuinfo 2>/dev/null; }; then
    echo "host,-arch-capabilities"
else
    echo "host"
fi
