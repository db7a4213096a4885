//! KVM state: the VM (memory, irqchip, PIT) and the vCPU threads.

pub mod vcpu;
pub mod vm;
