//! The SIGSYS handler: a refused system call ends kuml with one line that names the thread,
//! its filter and the call.
//!
//! The handler runs on the thread that made the call, in signal context: it formats into a
//! stack buffer and calls only write(2) and _exit(2), which every filter allows.

use std::cell::Cell;

use super::names::SYSCALLS;

/// The longest filter name (see `ThreadKind::name`).
const LABEL_LEN: usize = 16;

thread_local! {
    /// The filter this thread installed itself (empty: none, or one it inherited). `const`
    /// initialisation and no destructor: the signal handler reads it without allocating.
    static FILTER: Cell<[u8; LABEL_LEN]> = const { Cell::new([0; LABEL_LEN]) };
}

/// Records `name` as the filter of the calling thread, for the report.
pub(super) fn set_filter_name(name: &str) {
    let mut label = [0u8; LABEL_LEN];
    let n = name.len().min(LABEL_LEN);
    label[..n].copy_from_slice(&name.as_bytes()[..n]);
    FILTER.with(|f| f.set(label));
}

/// The name of system call `nr` on x86_64, if it has one.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    SYSCALLS
        .binary_search_by_key(&nr, |(n, _)| *n)
        .ok()
        .map(|i| SYSCALLS[i].1)
}

/// A fixed buffer that formats without allocating.
pub(super) struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    pub(super) fn new() -> Line {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) -> &mut Line {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    pub(super) fn push_num(&mut self, mut v: u64) -> &mut Line {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The report for a refused call `nr` on thread `thread` under filter `filter` (empty:
/// inherited from the thread that started it).
pub(super) fn report(line: &mut Line, thread: &[u8], filter: &[u8], nr: i64) {
    line.push(b"kuml: seccomp: thread '")
        .push(thread)
        .push(b"' (filter ");
    if filter.is_empty() {
        line.push(b"inherited from the thread that started it");
    } else {
        line.push(filter);
    }
    line.push(b") made system call ");
    if nr < 0 {
        line.push(b"-");
    }
    line.push_num(nr.unsigned_abs()).push(b" (");
    line.push(syscall_name(nr).unwrap_or("unknown").as_bytes());
    line.push(b"), which its filter forbids; kuml stops (KUML_SECCOMP=off runs without filters)\n");
}

/// The part of `siginfo_t` a SIGSYS fills in (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

fn nul_trimmed(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    &b[..end]
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS from
    // seccomp its union holds `_sigsys`, laid out as `SigsysInfo`.
    let nr = unsafe { (*(info as *const SigsysInfo)).syscall };
    let filter = FILTER.with(Cell::get);
    // The thread's name as the kernel keeps it (comm: "vcpu0", "kuml" for the main thread).
    let mut comm = [0u8; 17];
    let comm_ok = {
        // SAFETY: PR_GET_NAME writes at most 16 bytes into the 17-byte buffer.
        unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr()) == 0 }
    };
    let thread = if comm_ok {
        nul_trimmed(&comm)
    } else {
        b"?".as_slice()
    };
    let mut line = Line::new();
    report(&mut line, thread, nul_trimmed(&filter), i64::from(nr));
    let bytes = line.as_bytes();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer lives on this stack.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(crate::exit::EXIT_ERROR);
    }
}

/// Installs the SIGSYS handler for the whole process.
pub(super) fn install_handler() -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is valid; the fields set below make it SA_SIGINFO with
    // a handler of the matching signature and an empty mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa.sa_mask` is a valid sigset_t owned by `sa`.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised; a null old action is allowed.
    if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_come_from_the_table() {
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(libc::SYS_socket), Some("socket"));
        assert_eq!(syscall_name(libc::SYS_execve), Some("execve"));
        assert_eq!(syscall_name(libc::SYS_ptrace), Some("ptrace"));
        assert_eq!(syscall_name(libc::SYS_futex_waitv), Some("futex_waitv"));
        assert_eq!(syscall_name(100_000), None);
        assert!(SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn test_report_names_thread_filter_and_call() {
        let mut l = Line::new();
        report(&mut l, b"vcpu0", b"vcpu", libc::SYS_socket);
        assert_eq!(
            std::str::from_utf8(l.as_bytes()).unwrap(),
            "kuml: seccomp: thread 'vcpu0' (filter vcpu) made system call 41 (socket), which its \
             filter forbids; kuml stops (KUML_SECCOMP=off runs without filters)\n"
        );
        let mut l = Line::new();
        report(&mut l, b"passt-log", b"", 9999);
        let s = std::str::from_utf8(l.as_bytes()).unwrap();
        assert!(s.contains("'passt-log' (filter inherited from the thread that started it)"));
        assert!(s.contains("system call 9999 (unknown)"));
    }

    #[test]
    fn test_line_truncates_instead_of_overflowing() {
        let mut l = Line::new();
        l.push(&[b'x'; 300]).push_num(u64::MAX);
        assert_eq!(l.as_bytes().len(), 256);
        let mut l = Line::new();
        l.push_num(0).push(b" ").push_num(u64::MAX);
        assert_eq!(l.as_bytes(), b"0 18446744073709551615");
    }
}
