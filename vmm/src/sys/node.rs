//! Who may use a host device node: what kuml says when its user may not open `/dev/kvm`.
//!
//! kuml needs no root (as UML): a user who may read and write `/dev/kvm` runs it. Debian's
//! udev gives `/dev/kvm` to group `kvm` with mode 0660, so the usual answer is to join that
//! group. The message names the node's owner, group and mode as they are on this host.

use std::ffi::CStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// PURE: `owner root, group kvm, mode 0660` from the node's ids (named where the host names
/// them) and permission bits.
pub fn describe(owner: &str, group: &str, mode: u32) -> String {
    format!("owner {owner}, group {group}, mode {:04o}", mode & 0o7777)
}

/// PURE: the advice for a user refused by a node owned by `group` with `mode`: join the
/// group when the group may read and write it, else what Debian's udev rule does.
pub fn kvm_advice(group: &str, mode: u32) -> String {
    if mode & 0o060 == 0o060 && group != "root" {
        format!(
            "run kuml as a member of group {group} (`sudo adduser $USER {group}`, then log in \
             again); no root is needed"
        )
    } else {
        "give it to group kvm with mode 0660, as Debian's udev does (`sudo chgrp kvm /dev/kvm; \
         sudo chmod 0660 /dev/kvm`), and run kuml as a member of kvm (`sudo adduser $USER kvm`, \
         then log in again); no root is needed"
            .to_owned()
    }
}

/// The owner, group and mode of `path` for a message, or `None` if it cannot be read.
pub fn owner_group_mode(path: &Path) -> Option<(String, String, u32)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((user_name(meta.uid()), group_name(meta.gid()), meta.mode()))
}

/// The name of user `uid`, or the number.
fn user_name(uid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid out-parameter (null pointers, zero ids).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pw` and `buf` (whose length it is given) and sets
    // `out` to `&pw` on success; both outlive the call.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return uid.to_string();
    }
    // SAFETY: on success pw_name points at a NUL-terminated name inside `buf`.
    unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned()
}

/// The name of group `gid`, or the number.
fn group_name(gid: u32) -> String {
    let mut buf = vec![0u8; 16384];
    // SAFETY: an all-zero group is a valid out-parameter (null pointers, zero id).
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out = std::ptr::null_mut();
    // SAFETY: getgrgid_r writes into `gr` and `buf` (whose length it is given) and sets
    // `out` to `&gr` on success; both outlive the call.
    let r = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return gid.to_string();
    }
    // SAFETY: on success gr_name points at a NUL-terminated name inside `buf`.
    unsafe { CStr::from_ptr(gr.gr_name) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_node() {
        assert_eq!(
            describe("root", "kvm", 0o20660),
            "owner root, group kvm, mode 0660"
        );
    }

    #[test]
    fn a_group_that_may_use_the_node_is_the_advice() {
        let a = kvm_advice("kvm", 0o660);
        assert!(a.contains("member of group kvm"), "{a}");
        assert!(a.contains("adduser $USER kvm"), "{a}");
    }

    #[test]
    fn a_node_only_root_may_use_gets_debians_rule() {
        for (group, mode) in [("root", 0o600), ("root", 0o660), ("kvm", 0o600)] {
            let a = kvm_advice(group, mode);
            assert!(a.contains("chgrp kvm /dev/kvm"), "{group} {mode:o}: {a}");
        }
    }

    #[test]
    fn names_come_from_the_host() {
        assert_eq!(user_name(0), "root");
        assert_eq!(group_name(0), "root");
        // An id nobody has is its number.
        assert_eq!(user_name(4_000_000_123), "4000000123");
    }
}
