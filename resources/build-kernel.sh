#!/bin/bash
# Build the kuml guest kernel (vmlinux + bzImage) from Debian's linux-source-6.1.
#
#   resources/build-kernel.sh [--force]
#
# Inputs : resources/kernel/kuml.fragment, resources/kernel/patches/*.patch,
#          resources/kernel/agent/kuml_agent.c (copied to drivers/misc/), this script.
# Output : ${KUML_GUEST_DIR:-<checkout>/build/guest}/{vmlinux,bzImage,kernel.config,kernel.release}
# Cache  : ${KUML_CACHE:-/var/cache/kuml} (or ~/.cache/kuml when that is not writable)
#            kernel-<key>/         finished outputs; key = hash of all inputs above
#            linux-source-6.1/     one extracted source tree, patched in place (the applied
#                                  patch set is recorded in .kuml-applied/ and swapped when it changes)
#            linux-obj/            the O= object tree, so a changed input rebuilds incrementally
# A cache hit only copies kernel-<key>/* to the output directory (milliseconds).
# Env: KUML_JOBS (default nproc), KUML_KERNEL_TAR (default /usr/src/linux-source-6.1.tar.xz).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
if [ -n "${KUML_CACHE:-}" ]; then
    cache=$KUML_CACHE
else
    cache=/var/cache/kuml
    { mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; } || cache=${XDG_CACHE_HOME:-$HOME/.cache}/kuml
fi
out=${KUML_GUEST_DIR:-$root/build/guest}
tarball=${KUML_KERNEL_TAR:-/usr/src/linux-source-6.1.tar.xz}
jobs=${KUML_JOBS:-$(nproc)}
frag=$here/kernel/kuml.fragment
agent=$here/kernel/agent/kuml_agent.c
patches=("$here"/kernel/patches/*.patch)
force=0
[ "${1:-}" = "--force" ] && force=1

log() { echo "build-kernel: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -f "$tarball" ] || die "$tarball missing (apt-get install linux-source-6.1, or run resources/setup-host.sh)"
key=$( { for f in "$frag" "$agent" "${patches[@]}" "$here/build-kernel.sh"; do
           echo "== $(basename "$f")"; cat "$f"; done
         echo "== tarball $(basename "$tarball") $(stat -c %s "$tarball")"; } | sha256sum | cut -c1-16)
res=$cache/kernel-$key

install_outputs() {
    mkdir -p "$out"
    for f in vmlinux bzImage kernel.config kernel.release; do
        cp -f "$res/$f" "$out/.$f.tmp" && mv -f "$out/.$f.tmp" "$out/$f"
    done
    log "$(cat "$res/kernel.release") (key $key) -> $out/{vmlinux,bzImage,kernel.config}"
}

if [ $force = 0 ] && [ -f "$res/.done" ]; then
    install_outputs
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.build-kernel.lock"
flock -n 9 || { log "waiting for another build (lock $cache/.build-kernel.lock)"; flock 9; }
if [ $force = 0 ] && [ -f "$res/.done" ]; then   # someone else built it meanwhile
    install_outputs
    exit 0
fi

src=$cache/linux-source-6.1
obj=$cache/linux-obj
if [ ! -f "$src/.kuml-extracted" ]; then
    log "extracting $tarball into $cache"
    rm -rf "$src" "$obj" "$cache/.extract"
    mkdir -p "$cache/.extract"
    tar -xaf "$tarball" -C "$cache/.extract"
    mv "$cache/.extract/linux-source-6.1" "$src"
    rmdir "$cache/.extract"
    touch "$src/.kuml-extracted"
fi

# --- bring the tree's patch set in line with resources/kernel/patches ---
applied_dir=$src/.kuml-applied
mkdir -p "$applied_dir"
mapfile -t applied < <(cd "$applied_dir" && ls -1 | sort)
common=0
while [ $common -lt ${#applied[@]} ] && [ $common -lt ${#patches[@]} ] &&
      [ "${applied[$common]}" = "$(basename "${patches[$common]}")" ] &&
      cmp -s "$applied_dir/${applied[$common]}" "${patches[$common]}"; do
    common=$((common + 1))
done
for ((i = ${#applied[@]} - 1; i >= common; i--)); do
    log "reverting ${applied[$i]}"
    patch -d "$src" -p1 -R -s -f < "$applied_dir/${applied[$i]}" || die "cannot revert ${applied[$i]}; delete $src to start over"
    rm -f "$applied_dir/${applied[$i]}"
done
for ((i = common; i < ${#patches[@]}; i++)); do
    log "applying $(basename "${patches[$i]}")"
    patch -d "$src" -p1 -s -f --no-backup-if-mismatch < "${patches[$i]}" || die "cannot apply ${patches[$i]}"
    cp "${patches[$i]}" "$applied_dir/"
done
cmp -s "$agent" "$src/drivers/misc/kuml_agent.c" || cp "$agent" "$src/drivers/misc/kuml_agent.c"

# --- configure: tinyconfig + fragment + olddefconfig, then verify ---
mk() { make -C "$src" O="$obj" ARCH=x86_64 KBUILD_BUILD_USER=kuml KBUILD_BUILD_HOST=kuml "$@"; }
mkdir -p "$obj"
log "configuring (tinyconfig + $(basename "$frag"))"
mk -s tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$frag" >/dev/null
mk -s olddefconfig >/dev/null
bad=0
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=*)
        grep -qxF -- "$line" "$obj/.config" || { log "config mismatch: want '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$obj/.config" || echo unset)'"; bad=1; } ;;
    "# CONFIG_"*" is not set")
        sym=${line#\# }; sym=${sym%% *}
        if grep -q "^$sym=" "$obj/.config"; then log "config mismatch: want '$line', got '$(grep "^$sym=" "$obj/.config")'"; bad=1; fi ;;
    esac
done < "$frag"
[ $bad = 0 ] || die "fragment lines did not survive olddefconfig (a dependency is missing)"

# --- build ---
log "building vmlinux + bzImage with -j$jobs in $obj"
start=$(date +%s)
mk -s -j"$jobs" bzImage
log "built in $(( $(date +%s) - start )) s"

rm -rf "$res.tmp"; mkdir -p "$res.tmp"
cp "$obj/vmlinux" "$res.tmp/vmlinux"
cp "$obj/arch/x86/boot/bzImage" "$res.tmp/bzImage"
cp "$obj/.config" "$res.tmp/kernel.config"
mk -s kernelrelease > "$res.tmp/kernel.release"
touch "$res.tmp/.done"
rm -rf "$res"; mv "$res.tmp" "$res"
install_outputs
