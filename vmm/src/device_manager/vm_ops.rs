//! The KVM VM operations the device manager needs, as a trait so that its bookkeeping can be
//! unit-tested without a VM (a fake counts what is registered).

use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Errors pushing the interrupt routing table.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// More routes than the table can hold.
    #[error("{0} interrupt routes do not fit KVM's routing table")]
    TooMany(usize),
    /// KVM refused the table.
    #[error("KVM refused the interrupt routing table")]
    Kvm(#[source] kvm_ioctls::Error),
}

/// irqfds, ioeventfds and GSI routing of one VM.
pub trait VmOps: Send + Sync {
    /// Makes writes to `fd` raise `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error>;
    /// Undoes [`VmOps::register_irqfd`].
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error>;
    /// Makes guest writes to MMIO address `addr` signal `fd` (no datamatch).
    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error>;
    /// Undoes [`VmOps::register_ioevent`].
    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error>;
    /// Replaces the whole GSI routing table.
    fn set_gsi_routing(&self, routes: &[kvm_irq_routing_entry]) -> Result<(), RoutingError>;
}

impl VmOps for VmFd {
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        VmFd::register_irqfd(self, fd, gsi)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        VmFd::unregister_irqfd(self, fd, gsi)
    }

    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        VmFd::register_ioevent(self, fd, &IoEventAddress::Mmio(addr), NoDatamatch)
    }

    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        VmFd::unregister_ioevent(self, fd, &IoEventAddress::Mmio(addr), NoDatamatch)
    }

    fn set_gsi_routing(&self, routes: &[kvm_irq_routing_entry]) -> Result<(), RoutingError> {
        let table =
            KvmIrqRouting::from_entries(routes).map_err(|_| RoutingError::TooMany(routes.len()))?;
        VmFd::set_gsi_routing(self, &table).map_err(RoutingError::Kvm)
    }
}

#[cfg(test)]
pub mod fake {
    //! A VM that records registrations, and can be told to refuse the n-th one.

    use std::collections::BTreeSet;
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;

    use super::*;

    /// What a [`FakeVm`] holds.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct Registered {
        /// (fd, gsi) pairs.
        pub irqfds: BTreeSet<(i32, u32)>,
        /// (fd, address) pairs.
        pub ioevents: BTreeSet<(i32, u64)>,
        /// The last routing table's length.
        pub routes: usize,
    }

    /// A VM without KVM.
    #[derive(Debug, Default)]
    pub struct FakeVm {
        /// What is registered now.
        pub state: Mutex<Registered>,
        /// Registrations (irqfds, ioeventfds) to let through before refusing one: the next one
        /// after that many fails with EINVAL (then counting stops).
        pub fail_after: Mutex<Option<usize>>,
    }

    impl FakeVm {
        fn gate(&self) -> Result<(), kvm_ioctls::Error> {
            let mut f = self.fail_after.lock().unwrap();
            match *f {
                Some(0) => {
                    *f = None;
                    Err(kvm_ioctls::Error::new(libc::EINVAL))
                }
                Some(n) => {
                    *f = Some(n - 1);
                    Ok(())
                }
                None => Ok(()),
            }
        }

        /// A copy of what is registered.
        pub fn registered(&self) -> Registered {
            self.state.lock().unwrap().clone()
        }
    }

    impl VmOps for FakeVm {
        fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
            self.gate()?;
            let new = self
                .state
                .lock()
                .unwrap()
                .irqfds
                .insert((fd.as_raw_fd(), gsi));
            assert!(new, "irqfd registered twice");
            Ok(())
        }

        fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
            let had = self
                .state
                .lock()
                .unwrap()
                .irqfds
                .remove(&(fd.as_raw_fd(), gsi));
            assert!(had, "unregistering an irqfd that is not registered");
            Ok(())
        }

        fn register_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
            self.gate()?;
            let new = self
                .state
                .lock()
                .unwrap()
                .ioevents
                .insert((fd.as_raw_fd(), addr));
            assert!(new, "ioeventfd registered twice");
            Ok(())
        }

        fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
            let had = self
                .state
                .lock()
                .unwrap()
                .ioevents
                .remove(&(fd.as_raw_fd(), addr));
            assert!(had, "unregistering an ioeventfd that is not registered");
            Ok(())
        }

        fn set_gsi_routing(&self, routes: &[kvm_irq_routing_entry]) -> Result<(), RoutingError> {
            self.state.lock().unwrap().routes = routes.len();
            Ok(())
        }
    }
}
