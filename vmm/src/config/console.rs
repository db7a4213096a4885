//! PURE: UML's console names on the guest command line, mapped to kuml's consoles.
//!
//! In a UML guest the consoles `con0`, `con1`, … are the ttys `tty0`, `tty1`, … (UML's console
//! driver is named `tty`), so a launcher writes `console=tty0` (or `console=tty`, which Linux
//! reads as index 0) for con0 and `console=ttyN` for conN; the serial lines `sslN` are
//! `ttySN`. Under kuml the serial lines are 16550 UARTs, which the guest names `ttySN` too, so
//! `console=ttySN` needs nothing. The consoles are virtio-console ports, which the guest names
//! `hvc0`, `hvc1`, … in the order they come up: con0 first, then the others in ascending
//! order, so conN is `hvc<K>` with K its position among the consoles that exist at boot (K = N
//! when con0..conN all exist).
//!
//! kuml keeps each such word as given (Linux ignores a `console=` name no console driver
//! registers, and the project's kernel has no VT console) and adds `console=hvc<K>` right
//! after it: Linux makes the last `console=` the guest's `/dev/console`, so the client's order
//! of consoles is kept, and `/proc/cmdline` still holds every word the client wrote.

/// The most consoles UML has (`MAX_TTYS`).
pub const UML_CONSOLES: u32 = 16;

/// The UML console a `console=` value names: `tty` and `tty0` → con0, `ttyN` → conN (options
/// after a comma are allowed: `tty1,115200`). `ttySN` (a serial line) and every other name →
/// `None`.
pub fn uml_console(value: &str) -> Option<u32> {
    let name = value.split(',').next().unwrap_or(value);
    let digits = name.strip_prefix("tty")?;
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 2 {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (n < UML_CONSOLES).then_some(n)
}

/// The kernel's words: those before a `--` (after it every word is init's).
fn kernel_words(words: &[String]) -> &[String] {
    let end = words.iter().position(|w| w == "--").unwrap_or(words.len());
    &words[..end]
}

/// The UML consoles the kernel's `console=` words name, in order, without repeats.
pub fn named_consoles(words: &[String]) -> Vec<u32> {
    let mut out = Vec::new();
    for n in kernel_words(words)
        .iter()
        .filter_map(|w| w.strip_prefix("console="))
        .filter_map(uml_console)
    {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The guest's hvc index of console `con` when the consoles `ids` (ascending) exist at boot.
pub fn hvc_index(con: u32, ids: &[u32]) -> Option<usize> {
    ids.iter().position(|i| *i == con)
}

/// `words` with `console=hvc<K>` added right after each kernel word `console=tty…` that names a
/// UML console among `ids` (the consoles that exist at boot, ascending). Words after `--` are
/// left alone.
pub fn map_consoles(words: &[String], ids: &[u32]) -> Vec<String> {
    let kernel = kernel_words(words).len();
    let mut out = Vec::with_capacity(words.len() + 1);
    for (i, w) in words.iter().enumerate() {
        out.push(w.clone());
        if i >= kernel {
            continue;
        }
        if let Some(k) = w
            .strip_prefix("console=")
            .and_then(uml_console)
            .and_then(|n| hvc_index(n, ids))
        {
            out.push(format!("console=hvc{k}"));
        }
    }
    out
}

/// One line per UML console word, saying what kuml made of it (printed once at start).
/// `added` are the consoles kuml created only because a `console=` word names them.
pub fn console_notes(words: &[String], ids: &[u32], added: &[u32]) -> Vec<String> {
    let mut notes = Vec::new();
    for value in kernel_words(words)
        .iter()
        .filter_map(|w| w.strip_prefix("console="))
    {
        let Some(n) = uml_console(value) else {
            continue;
        };
        let note = match hvc_index(n, ids) {
            Some(k) if added.contains(&n) => format!(
                "console={value}: UML's con{n}, which no con{n}= names: it exists with the \
                 default channel, as in UML, and is the guest's hvc{k} (console=hvc{k} added)"
            ),
            Some(k) => {
                format!("console={value}: UML's con{n}, the guest's hvc{k} (console=hvc{k} added)")
            }
            None => format!(
                "console={value}: UML's con{n} does not exist (con{n}=none): the word reaches \
                 the guest unchanged and names no console"
            ),
        };
        notes.push(note);
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn uml_console_names() {
        assert_eq!(uml_console("tty"), Some(0));
        assert_eq!(uml_console("tty0"), Some(0));
        assert_eq!(uml_console("tty1"), Some(1));
        assert_eq!(uml_console("tty15"), Some(15));
        assert_eq!(uml_console("tty2,38400n8"), Some(2));
        assert_eq!(uml_console("tty16"), None);
        assert_eq!(uml_console("tty007"), None);
        assert_eq!(uml_console("ttyS0"), None);
        assert_eq!(uml_console("ttyS1,115200"), None);
        assert_eq!(uml_console("hvc0"), None);
        assert_eq!(uml_console("tty1x"), None);
        assert_eq!(uml_console("ttyx"), None);
        assert_eq!(uml_console(""), None);
    }

    #[test]
    fn adds_the_hvc_after_each_uml_console_word() {
        let ids = [0, 1, 2];
        assert_eq!(
            map_consoles(&w(&["quiet", "console=tty1"]), &ids),
            w(&["quiet", "console=tty1", "console=hvc1"])
        );
        assert_eq!(
            map_consoles(&w(&["console=tty", "console=tty0"]), &ids),
            w(&[
                "console=tty",
                "console=hvc0",
                "console=tty0",
                "console=hvc0"
            ])
        );
        // The client's order is kept: the serial line stays the last console (/dev/console).
        assert_eq!(
            map_consoles(&w(&["console=tty0", "console=ttyS0"]), &ids),
            w(&["console=tty0", "console=hvc0", "console=ttyS0"])
        );
        // Words after `--` are init's.
        assert_eq!(
            map_consoles(&w(&["a", "--", "console=tty1"]), &ids),
            w(&["a", "--", "console=tty1"])
        );
    }

    #[test]
    fn hvc_numbers_follow_the_consoles_that_exist() {
        // con0 and con3 only: con3 is the guest's second hvc.
        assert_eq!(
            map_consoles(&w(&["console=tty3"]), &[0, 3]),
            w(&["console=tty3", "console=hvc1"])
        );
        // A console that does not exist: nothing added.
        assert_eq!(
            map_consoles(&w(&["console=tty2"]), &[0, 3]),
            w(&["console=tty2"])
        );
    }

    #[test]
    fn named_console_list() {
        assert_eq!(
            named_consoles(&w(&[
                "console=tty",
                "console=ttyS1",
                "console=tty3",
                "console=tty0",
                "--",
                "console=tty5"
            ])),
            vec![0, 3]
        );
    }

    #[test]
    fn notes_say_what_kuml_did() {
        let notes = console_notes(
            &w(&["console=tty1", "console=ttyS0", "console=tty2"]),
            &[0, 1],
            &[1],
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("console=tty1: UML's con1, which no con1= names"));
        assert!(notes[0].ends_with("the guest's hvc1 (console=hvc1 added)"));
        assert!(notes[1].starts_with("console=tty2: UML's con2 does not exist"));
        let notes = console_notes(&w(&["console=tty0"]), &[0], &[]);
        assert_eq!(
            notes,
            ["console=tty0: UML's con0, the guest's hvc0 (console=hvc0 added)"]
        );
    }

    proptest! {
        #[test]
        fn keeps_every_word_in_order(words in proptest::collection::vec("(console=)?(tty|ttyS|hvc)?[0-9]{0,3}|--", 0..6),
                                     ids in proptest::collection::btree_set(0u32..16, 0..5)) {
            let ids: Vec<u32> = ids.into_iter().collect();
            let out = map_consoles(&words, &ids);
            // Removing kuml's added words gives the input back.
            let mut it = out.iter().peekable();
            let mut back = Vec::new();
            while let Some(x) = it.next() {
                back.push(x.clone());
                let before_dashes = !back.contains(&"--".to_string());
                if before_dashes && x.strip_prefix("console=").and_then(uml_console)
                    .is_some_and(|n| ids.contains(&n)) {
                    let added = it.next().expect("an hvc word follows");
                    prop_assert!(added.starts_with("console=hvc"));
                }
            }
            prop_assert_eq!(back, words);
        }
    }
}
