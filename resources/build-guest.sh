#!/bin/bash
# Build everything a kuml test guest needs into ${KUML_GUEST_DIR:-<checkout>/build/guest}:
#   vmlinux, bzImage, kernel.config, kernel.release   (resources/build-kernel.sh, cached)
#   initramfs.cpio.gz, rootfs.ext4, data.ext4          (resources/build-rootfs.sh)
# Host packages come from resources/setup-host.sh (run that once, as root).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/build-kernel.sh" "$@"
"$here/build-rootfs.sh"
