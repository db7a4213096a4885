//! The control seam without mconsole: a VMM in this process, driven with typed
//! [`VmmAction`]s through a [`ControlHandle`] (what a second front-end would use), hot-plugs a
//! disk and removes it again. Each answer comes when the guest has done its part: the attach
//! once its virtio-blk driver started the device, the detach once it ejected the slot.

#![allow(clippy::tests_outside_test_module)]

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kuml::control::{ControlError, ControlHandle, ControlQueue, DeviceId, VmmAction, VmmData};
use kuml::exit::VmExit;
use kuml::vmm::Vmm;
use kuml_e2e::{artifact, host_guest_options, require_kvm};

/// Boot and hot-plug under PVM emulation are slow; this only bounds a hang.
const GUEST: Duration = Duration::from_secs(900);

fn wait(
    rx: mpsc::Receiver<Result<VmmData, ControlError>>,
    what: &str,
) -> Result<VmmData, ControlError> {
    rx.recv_timeout(GUEST)
        .unwrap_or_else(|e| panic!("no answer to {what} within {GUEST:?}: {e}"))
}

fn wait_for_text(path: &Path, text: &str) {
    let deadline = Instant::now() + GUEST;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not in the console log {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_disk_comes_and_goes_through_the_control_seam() {
    require_kvm();
    kuml::vstate::vcpu::install_kick_handler().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let img = dir.path().join("extra.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mut args = vec![
        format!("kernel={}", artifact("vmlinux").display()),
        format!("initrd={}", artifact("initramfs.cpio").display()),
        "mem=128M".to_owned(),
        "noreboot".to_owned(),
        format!("con0=null,file:{}", console.display()),
        "ssl=null".to_owned(),
        // The in-kernel agent keeps the guest in its kernel (user space does not run on every
        // host) and says when the boot is done; its input is null, so it only waits.
        "kuml.agent=hvc0".to_owned(),
    ];
    args.extend(host_guest_options());
    let cfg = match kuml::config::parse(&args).unwrap() {
        kuml::config::Action::Run(c) => *c,
        other => panic!("{other:?}"),
    };

    let (tx, rx) = mpsc::channel::<ControlHandle>();
    let vm = std::thread::spawn(move || {
        let wake = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut vmm = Vmm::build(&cfg, "control-seam", ControlQueue::new(wake), "test".into())
            .expect("the VM builds");
        tx.send(vmm.control_handle()).unwrap();
        let exit = vmm.run().expect("the event loop runs");
        vmm.shutdown(&exit);
        exit
    });
    let control = rx.recv().unwrap();
    // Hot-plug answers must come within HOTPLUG_TIMEOUT: start once the guest has booted.
    wait_for_text(&console, "KAGENT ready");

    let spec = match ubd::parse_ubd(&format!("1={}", img.display())).unwrap() {
        ubd::UbdOption::Device(s) => s,
        other => panic!("{other:?}"),
    };
    // Answered once the guest's driver started the disk (found at its boot scan or through
    // ACPI hot-plug, whichever comes first).
    assert_eq!(
        wait(
            control.request(VmmAction::AttachDisk(spec.clone())),
            "the attach"
        )
        .unwrap(),
        VmmData::Empty
    );
    wait_for_text(&console, "[vda] 65536 512-byte logical blocks");
    assert_eq!(
        wait(
            control.request(VmmAction::QueryDevice(DeviceId::Disk(1))),
            "the query"
        )
        .unwrap(),
        VmmData::Disk(Some(spec.clone()))
    );
    // Twice is refused while the first is there.
    let again = wait(
        control.request(VmmAction::AttachDisk(spec)),
        "the second attach",
    );
    assert!(
        matches!(
            again,
            Err(ControlError::AlreadyConfigured(DeviceId::Disk(1)))
        ),
        "{again:?}"
    );

    assert_eq!(
        wait(
            control.request(VmmAction::Detach(DeviceId::Disk(1))),
            "the detach"
        )
        .unwrap(),
        VmmData::Empty
    );
    assert_eq!(
        wait(
            control.request(VmmAction::QueryDevice(DeviceId::Disk(1))),
            "the query"
        )
        .unwrap(),
        VmmData::Disk(None)
    );
    let gone = wait(
        control.request(VmmAction::Detach(DeviceId::Disk(1))),
        "a second detach",
    );
    assert!(
        matches!(gone, Err(ControlError::NoSuchDevice(DeviceId::Disk(1)))),
        "{gone:?}"
    );

    assert_eq!(
        wait(control.request(VmmAction::Halt), "halt").unwrap(),
        VmmData::Empty
    );
    assert_eq!(vm.join().unwrap(), VmExit::Halt);
}
