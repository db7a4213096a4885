//! PURE: a text form of a CPUID table, for recording what a host's `KVM_GET_SUPPORTED_CPUID`
//! returns (`cargo run -p kuml --example cpuid-dump`) and replaying it in unit tests.
//!
//! One entry per line, seven hexadecimal fields; `#` starts a comment:
//!
//! ```text
//! # function   index  flags  eax        ebx        ecx        edx
//! 0x0000000b   0x0    0x1    0x00000000 0x00000000 0x00000000 0x00000000
//! ```

use kvm_bindings::kvm_cpuid_entry2;

/// A dump line that is not seven hexadecimal numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CPUID dump line {line}: expected seven hexadecimal numbers (function index flags eax ebx ecx edx)")]
pub struct DumpError {
    /// The line number, from 1.
    pub line: usize,
}

/// Formats `entries` as dump lines, with a header comment naming `source`.
pub fn format(source: &str, entries: &[kvm_cpuid_entry2]) -> String {
    let mut out = format!(
        "# KVM_GET_SUPPORTED_CPUID: {source}\n# function   index  flags  eax        ebx        ecx        edx\n"
    );
    for e in entries {
        out.push_str(&std::format!(
            "{:#010x} {:#05x} {:#05x} {:#010x} {:#010x} {:#010x} {:#010x}\n",
            e.function,
            e.index,
            e.flags,
            e.eax,
            e.ebx,
            e.ecx,
            e.edx
        ));
    }
    out
}

/// Parses dump lines back into entries.
pub fn parse(text: &str) -> Result<Vec<kvm_cpuid_entry2>, DumpError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let err = DumpError { line: i + 1 };
        let fields: Vec<u32> = line
            .split_whitespace()
            .map(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| err.clone())?;
        let [function, index, flags, eax, ebx, ecx, edx] = fields[..] else {
            return Err(err);
        };
        entries.push(kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse("# c\n\n0x1 0 0 1 2 3").unwrap_err(),
            DumpError { line: 3 }
        );
        assert_eq!(
            parse("0x1 0 0 1 2 3 zz").unwrap_err(),
            DumpError { line: 1 }
        );
        assert_eq!(
            parse("0x1 0 0 1 2 3 4 5").unwrap_err(),
            DumpError { line: 1 }
        );
    }

    proptest! {
        #[test]
        fn round_trips(raw in proptest::collection::vec(any::<[u32; 7]>(), 0..40)) {
            let entries: Vec<kvm_cpuid_entry2> = raw
                .iter()
                .map(|r| kvm_cpuid_entry2 {
                    function: r[0], index: r[1], flags: r[2],
                    eax: r[3], ebx: r[4], ecx: r[5], edx: r[6],
                    ..Default::default()
                })
                .collect();
            let back = parse(&format("test", &entries)).unwrap();
            prop_assert_eq!(back.len(), entries.len());
            for (a, b) in back.iter().zip(&entries) {
                prop_assert_eq!(
                    (a.function, a.index, a.flags, a.eax, a.ebx, a.ecx, a.edx),
                    (b.function, b.index, b.flags, b.eax, b.ebx, b.ecx, b.edx)
                );
            }
        }
    }
}
