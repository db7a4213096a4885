#!/bin/bash
# Runs kuml's whole test suite: unit and property tests of every crate, the host integration
# tests (real UML tools, sockets, network namespaces) and the e2e tests that boot real guests
# on KVM. Builds whatever is missing first (host packages, guest kernel and root filesystems,
# kuml). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")"

resources/setup-host.sh
resources/build-guest.sh
cargo build --workspace --bins
# One e2e guest per core: more would only slow every boot under emulation.
cargo test --workspace --no-fail-fast -- --test-threads="$(nproc)"
