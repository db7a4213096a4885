//! Records this host's `KVM_GET_SUPPORTED_CPUID` in the text form the CPUID unit tests replay
//! (`vmm/src/arch/x86_64/cpuid/fixtures/`):
//!
//! ```text
//! cargo run -p kuml --example cpuid-dump -- "Intel Xeon, PVM /dev/kvm, kernel 6.18" > host.txt
//! ```

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "this host".into());
    let kvm = Kvm::new()?;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    print!(
        "{}",
        kuml::arch::x86_64::cpuid::dump::format(&source, cpuid.as_slice())
    );
    Ok(())
}
