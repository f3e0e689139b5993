#!/bin/sh
# Build the cached built-in kernel (`ksm-harness build --source 6.1`) with a patch applied,
# in about a minute and a half: the source tree is copied as hard links (the patch replaces
# the files it changes), the build directory is copied, and make runs in a private mount
# namespace with the patched tree bind-mounted over the cached tree's path, so every
# object's command line is unchanged and only what the patch touches is rebuilt.
#
#   sh bench/build_broken_kernel.sh [PATCH] [OUT]       (as root; default: the KSM swap-in BUG)
#   .venv/bin/python bench/broken_kernel.py --clean source:6.1 --broken OUT/build
set -eu
here=$(cd "$(dirname "$0")" && pwd)
patch=$(realpath "${1:-$here/patches/ksm-swapin-bug.patch}")
out=${2:-/tmp/ksm-broken-kernel}
cache=${KSM_HARNESS_CACHE:-$HOME/.cache/ksm-harness}
src=$(ls -d "$cache"/source/linux-source-6.1_*/ | head -1); src=${src%/}
build=$(ls -d "$cache"/builds/linux-6.1*-builtin-*/ | head -1); build=${build%/}
[ -d "$src" ] && [ -f "$build/vmlinux" ] || {
    echo "build_broken_kernel: no cached built-in kernel: run ./ksm-harness build --source 6.1" >&2
    exit 1
}
rm -rf "$out"; mkdir -p "$out"
cp -al "$src" "$out/src"
cp -a "$build" "$out/build"
# patch(1) writes each changed file anew (a new inode): the cached tree's links are untouched
patch -d "$out/src" -p1 --no-backup-if-mismatch < "$patch"
unshare -m --propagation private sh -c "
    mount --bind '$out/src' '$src' &&
    PATH=/usr/lib/ccache:\$PATH make -s -C '$out/build' -j\$(nproc) vmlinux"
echo "build_broken_kernel: $out/build (boot it with --kernel $out/build)"
