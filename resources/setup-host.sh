#!/bin/bash
# Install everything kuml needs to build and test, on a fresh Debian 12 (bookworm) host.
# Run as root. Idempotent: installs only what is missing; safe to run again.
#
#   sudo resources/setup-host.sh
#
# Rust: the project pins 1.95.0 in rust-toolchain.toml (honoured by rustup). If no `cargo`
# is on PATH, this installs Debian's rustc-web/cargo-web (1.96 in bookworm-updates/security,
# which is >= the required 1.85) plus rustfmt-web and rust-web-clippy. Plain Debian `rustc`
# in bookworm is 1.63: too old, never used.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "setup-host: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

pkgs=(
    # build: Rust crates with C/sys deps, and the guest kernel from Debian sources
    build-essential pkg-config git ca-certificates curl
    linux-source-6.1 bc bison flex libelf-dev libssl-dev kmod cpio xz-utils
    # guest root filesystems
    busybox-static e2fsprogs
    # the nested lane's Debian 12 guest (resources/build-debian.sh)
    debootstrap
    # tests: reference VMM, UML tools (uml_mconsole, uml_switch, tunctl, uml_moo), networking,
    # consoles (port= via telnet, xterm= under Xvfb, pts/tty via tmux/socat), scripts
    qemu-system-x86 uml-utilities iproute2 telnet xvfb xterm tmux socat python3 procps psmisc
    file
    # tests' stall reports (tests/src/stall.rs): every kuml thread's stack when a guest stops
    gdb
    # network transports' other ends: passt and libslirp-helper (eth=slirp), vde_switch (eth=vde);
    # ethtool: the vector tunnel tests turn a namespace tunnel device's checksum offload off
    passt libslirp-helper vde2 ethtool
    # benchmarks: real UML, the anchor kuml replaces (bench/kbench.py boot)
    user-mode-linux
    # hostfs: building the Rust virtiofsd (below)
    libseccomp-dev libcap-ng-dev
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

rust_pkgs=()
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    rust_pkgs=(rustc-web cargo-web rustfmt-web rust-web-clippy)
fi

if [ ${#missing[@]} -gt 0 ] || [ ${#rust_pkgs[@]} -gt 0 ]; then
    apt-get update -q
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup-host: installing ${missing[*]}"
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    if [ ${#rust_pkgs[@]} -gt 0 ]; then
        if apt-cache show rustc-web >/dev/null 2>&1; then
            echo "setup-host: installing Debian's Rust toolchain: ${rust_pkgs[*]}"
            apt-get install -y -q --no-install-recommends "${rust_pkgs[@]}"
        else
            echo "setup-host: WARNING: no cargo and no rustc-web package; install Rust >= 1.85" \
                 "(e.g. rustup, which honours rust-toolchain.toml)" >&2
        fi
    fi
else
    echo "setup-host: all packages present"
fi

# /dev/kvm must be usable by the user running the tests
if [ -e /dev/kvm ]; then
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || echo "setup-host: note: /dev/kvm is not accessible; add the user to group kvm" >&2
    if [ -d /sys/module/kvm_pvm ]; then
        echo "setup-host: note: /dev/kvm is PVM (nested, no guest user space); see docs/testing.md" >&2
    fi
else
    echo "setup-host: WARNING: /dev/kvm missing (load kvm_intel/kvm_amd)" >&2
fi
# hostfs: the Rust virtiofsd (docs/hostfs.md). Debian 12 has no package of it (QEMU 7.2's
# /usr/lib/qemu/virtiofsd is the old C daemon: it needs root and takes other options), so it
# is built from crates.io, pinned, into /usr/local/bin; a run that finds that version skips it.
VIRTIOFSD_VERSION=1.14.0
have=$(/usr/local/bin/virtiofsd --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" = "$VIRTIOFSD_VERSION" ]; then
    echo "setup-host: virtiofsd $VIRTIOFSD_VERSION present"
else
    cargo=$(command -v cargo || echo "${CARGO_HOME:-$HOME/.cargo}/bin/cargo")
    echo "setup-host: building virtiofsd $VIRTIOFSD_VERSION from crates.io (a few minutes)"
    # Outside the checkout, so that its rust-toolchain.toml does not apply.
    (cd / && CARGO_TARGET_DIR="${KUML_CACHE:-/var/cache/kuml}/virtiofsd-build" \
        "$cargo" install virtiofsd --version "$VIRTIOFSD_VERSION" --locked --root /usr/local) ||
        echo "setup-host: WARNING: virtiofsd did not build; kuml runs without hostfs" >&2
fi

# cache for the guest kernel build (resources/build-kernel.sh)
mkdir -p "${KUML_CACHE:-/var/cache/kuml}"
echo "setup-host: done"
