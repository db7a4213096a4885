#!/bin/sh
# Print the guest kernel options a PVM-based /dev/kvm needs (see docs/testing.md), and
# nothing on other hosts. Tests and scripts append the output to the guest command line;
# the VMM itself never adds them.
#   PVM: the kvm_pvm module is loaded, or /dev/kvm exists while the CPU has neither vmx nor svm.
if [ -d /sys/module/kvm_pvm ] ||
   { [ -e /dev/kvm ] && ! grep -qwE 'vmx|svm' /proc/cpuinfo 2>/dev/null; }; then
    echo "noxsave clearcpuid=141,151,308 mitigations=off idle=halt"
fi
