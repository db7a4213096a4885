//! x86_64: memory layout, boot protocol, CPU state and ACPI tables.
//!
//! Everything here except [`regs`] (which talks to a vCPU) is a pure builder.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod hotplug_aml;
pub mod layout;
pub mod msr;
pub mod regs;
