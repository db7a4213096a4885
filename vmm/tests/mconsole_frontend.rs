//! kuml's mconsole front-end (`mconsole_adapter::MconsoleFrontend`) between the REAL Debian
//! `uml_mconsole` and a fake VMM that answers the typed control seam (`VmmAction` →
//! `Result<VmmData, ControlError>`). mconsole's own tests use a fake VMM that answers mconsole
//! commands with UML's texts (`proc`, `stack`), so they test the wire protocol and the clients;
//! this tests what kuml makes of each command: the action the VMM gets (or the reply mconsole
//! gives itself), and UML's reply text and exit code for each result, deferred ones included.
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kuml::control::{ControlError, ControlQueue, DeviceId, Responder, VmmAction, VmmData};
use kuml::mconsole_adapter::{MconsoleFrontend, SYSRQ_HELP};
use mconsole::Server;
use vmm_sys_util::eventfd::EventFd;

const UML_MCONSOLE: &str = "/usr/bin/uml_mconsole";
const VERSION: &str = "Linux kuml-test 6.1.0 #1 SMP x86_64";

fn disk_spec(text: &str) -> ubd::UbdSpec {
    match ubd::parse_ubd(text).unwrap() {
        ubd::UbdOption::Device(s) => s,
        other => panic!("{text}: {other:?}"),
    }
}

/// The VMM's side of the seam: typed answers; NIC attachments are answered later, as a
/// hot-plug is once the guest driver started the device.
fn answer(action: &VmmAction) -> Option<Result<VmmData, ControlError>> {
    Some(match action {
        VmmAction::QueryVersion => Ok(VmmData::Version(VERSION.into())),
        VmmAction::QueryMemory => Ok(VmmData::Memory(128 << 20)),
        VmmAction::AttachDisk(s) if s.unit == 2 => {
            Err(ControlError::AlreadyConfigured(DeviceId::Disk(2)))
        }
        VmmAction::AttachNic { .. } => return None,
        VmmAction::QueryDevice(DeviceId::Disk(1)) => Ok(VmmData::Disk(Some(disk_spec(
            "1=/tmp/root.cow,/tmp/base.img",
        )))),
        VmmAction::QueryDevice(DeviceId::Disk(_)) => Ok(VmmData::Disk(None)),
        VmmAction::QueryDevice(DeviceId::Console(1)) => {
            Ok(VmmData::Line(Some("pts:/dev/pts/7".into())))
        }
        VmmAction::Detach(DeviceId::Disk(0)) => Err(ControlError::NotRemovable(DeviceId::Disk(0))),
        VmmAction::Detach(id @ DeviceId::Nic(5)) => Err(ControlError::NoSuchDevice(*id)),
        _ => Ok(VmmData::Empty),
    })
}

/// Wakes the loop when an action is queued (the VMM's wake eventfd).
struct WakeFd(EventFd);

impl MutEventSubscriber for WakeFd {
    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.0, EventSet::IN)).unwrap();
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.read();
    }
}

struct FakeVmm {
    home: PathBuf,
    actions: Arc<Mutex<Vec<VmmAction>>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FakeVmm {
    fn start() -> FakeVmm {
        // uml_mconsole finds umid `t1` at ~/.uml/t1/mconsole.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".uml/t1")).unwrap();
        let socket = dir.path().join(".uml/t1/mconsole");
        let server = Arc::new(Mutex::new(Server::bind(&socket).unwrap()));
        let queue = ControlQueue::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let actions = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (q, seen, stop) = (queue.clone(), actions.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            type Sub = Arc<Mutex<dyn MutEventSubscriber + Send>>;
            let mut em = EventManager::<Sub>::new().unwrap();
            em.add_subscriber(Arc::new(Mutex::new(MconsoleFrontend::new(
                server,
                q.clone(),
            ))));
            em.add_subscriber(Arc::new(Mutex::new(WakeFd(q.wake_fd().unwrap()))));
            let mut later: Vec<(Instant, Responder)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                em.run_with_timeout(20).unwrap();
                for (action, respond) in q.take() {
                    seen.lock().unwrap().push(action.clone());
                    match answer(&action) {
                        Some(result) => respond(result),
                        None => later.push((Instant::now() + Duration::from_millis(300), respond)),
                    }
                }
                let now = Instant::now();
                let (due, wait): (Vec<_>, Vec<_>) = later.drain(..).partition(|(t, _)| *t <= now);
                later = wait;
                for (_, respond) in due {
                    respond(Ok(VmmData::Empty));
                }
            }
        });
        FakeVmm {
            home: dir.path().to_path_buf(),
            actions,
            done,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The actions the VMM got since the last call.
    fn take_actions(&self) -> Vec<VmmAction> {
        std::mem::take(&mut *self.actions.lock().unwrap())
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Runs the real `uml_mconsole t1 <args>` with `home` as HOME: its stdout and exit code.
fn uml_mconsole(home: &Path, args: &[&str]) -> (String, i32) {
    assert!(
        Path::new(UML_MCONSOLE).exists(),
        "{UML_MCONSOLE} is missing (Debian package uml-utilities)"
    );
    let out = Proc::new(UML_MCONSOLE)
        .env("HOME", home)
        .arg("t1")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}: stderr");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// A command's words, what uml_mconsole prints and its status, the action the VMM gets.
type Case = (&'static [&'static str], (String, i32), Option<VmmAction>);

#[test]
fn uml_mconsole_commands_reach_the_vmm_as_typed_actions_and_come_back_as_umls_replies() {
    let vm = FakeVmm::start();
    let s = vm.home.as_path();
    let ok = |text: &str| (format!("OK {text}\n"), 0);
    let err = |text: &str| (format!("ERR {text}\n"), 1);
    // uml_mconsole exits with a reply's negative errno as its status (-EBUSY: 240).
    let errno = |text: &str, e: i32| (format!("ERR {text}\n"), 256 - e);

    let cases: Vec<Case> = vec![
        (&["version"], ok(VERSION), Some(VmmAction::QueryVersion)),
        (&["config", "mem"], ok("134217728"), Some(VmmAction::QueryMemory)),
        (
            &["config", "ubd1=/tmp/x.img"],
            ok(""),
            Some(VmmAction::AttachDisk(disk_spec("1=/tmp/x.img"))),
        ),
        (
            &["config", "ubd2=/tmp/y.img"],
            errno("Device is already configured", libc::EBUSY),
            Some(VmmAction::AttachDisk(disk_spec("2=/tmp/y.img"))),
        ),
        (
            &["config", "ubd1"],
            ok("/tmp/root.cow,/tmp/base.img"),
            Some(VmmAction::QueryDevice(DeviceId::Disk(1))),
        ),
        (
            &["config", "ubd3"],
            ok(""),
            Some(VmmAction::QueryDevice(DeviceId::Disk(3))),
        ),
        (
            &["config", "con1"],
            ok("pts:/dev/pts/7"),
            Some(VmmAction::QueryDevice(DeviceId::Console(1))),
        ),
        (
            &["remove", "ubd0"],
            errno("Device is currently open", libc::EBUSY),
            Some(VmmAction::Detach(DeviceId::Disk(0))),
        ),
        (
            &["remove", "eth5"],
            errno("Device doesn't exist", libc::ENODEV),
            Some(VmmAction::Detach(DeviceId::Nic(5))),
        ),
        (&["stop"], ok("stopped"), Some(VmmAction::Pause)),
        // mconsole's own state: no second pause reaches the VMM.
        (&["stop"], err("Already stopped"), None),
        (&["go"], ok(""), Some(VmmAction::Resume)),
        (&["sysrq", "h"], ok(""), Some(VmmAction::SysRq('h'))),
        (&["cad"], ok(""), Some(VmmAction::CtrlAltDel)),
        // Answered without the VMM.
        (&["sysrq"], ok(SYSRQ_HELP), None),
        (&["config", "con1=none"], errno("kuml cannot configure a line to none; remove it", libc::EINVAL), None),
        (&["stack", "1"], err("kuml cannot do 'stack' from outside the guest: it needs an agent inside the guest, which kuml does not have yet"), None),
        (&["proc", "uptime"], err("kuml cannot do 'proc' from outside the guest: it needs an agent inside the guest, which kuml does not have yet"), None),
        (&["bogus"], err("Unknown command"), None),
    ];
    for (args, want, action) in cases {
        assert_eq!(uml_mconsole(s, args), want, "{args:?}");
        assert_eq!(vm.take_actions(), Vec::from_iter(action), "{args:?}");
    }

    // A hot-plug is answered when the VMM says so (here 300 ms later); uml_mconsole waits.
    let t = Instant::now();
    assert_eq!(uml_mconsole(s, &["config", "eth1=mcast"]), ok(""));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    match vm.take_actions().as_slice() {
        [VmmAction::AttachNic { index: 1, .. }] => {}
        other => panic!("config eth1=mcast: {other:?}"),
    }
}
