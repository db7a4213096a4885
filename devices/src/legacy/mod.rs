//! Legacy PC devices on the port-I/O bus: 16550 UARTs, the i8042, the ACPI power-management
//! block, pvpanic and the test exit port; and the Generic Event Device on the MMIO bus.

pub mod ged;
pub mod i8042;
pub mod pm;
pub mod serial;

/// Something the guest asked of the machine as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest entered S5 (`poweroff`).
    PowerOff,
    /// The guest reset the machine (`reboot`, the i8042 reset line, a triple fault).
    Reset,
    /// The guest kernel panicked (pvpanic).
    Panic,
    /// The guest wrote its exit status to the test exit port.
    Exit(u8),
}

/// Where devices report [`GuestEvent`]s; the VMM implements it.
pub trait GuestEvents: Send + Sync {
    /// Reports an event. The first one reported decides how the VM ends.
    fn report(&self, event: GuestEvent);
}
