#!/usr/bin/env bash
# LLVM for the `cuda` build, from PyPI instead of GitHub.
#
# Why: burn's CUDA backend compiles its kernels to PTX through LLVM
# (cubecl-llvm). At build time `tracel-llvm-bundler` downloads an LLVM bundle
# from GitHub unless a marker file says one is installed. Firewalled clusters
# often reach PyPI (through a mirror) but not GitHub. PyPI carries LLVM 23.1.1
# as static libraries in two wheels: `mlc-llvm-static` (X86) and
# `mlc-llvm-static-extra-targets` (NVPTX, AMDGPU). This script unpacks both
# into one folder, lays out the directory the bundler looks for, and writes
# its marker, so the build links against them and downloads nothing.
#
# Usage:
#   scripts/llvm_from_pypi.sh [DIR]     # DIR defaults to target/llvm-pypi
#   export XDG_DATA_HOME="$(scripts/llvm_from_pypi.sh --print-data-home [DIR])"
#   cargo build --release --features cuda
#
# Idempotent: a second run with the same DIR checks the layout and exits.
# PIP (default: python3 -m pip) and PIP_INDEX_URL are honoured.
set -euo pipefail

LLVM_VERSION=23.1.1.post0
BUNDLER_DIR=tracel-llvm-23.1.0-4   # what tracel-llvm-bundler 23.1.0-4 looks for
PACKAGES=("mlc-llvm-static==$LLVM_VERSION" "mlc-llvm-static-extra-targets==$LLVM_VERSION")

print_only=0
if [[ "${1:-}" == "--print-data-home" ]]; then
    print_only=1
    shift
fi
root_default="$(cd "$(dirname "$0")/.." && pwd)/target/llvm-pypi"
root="${1:-$root_default}"
mkdir -p "$root"
root="$(cd "$root" && pwd)"
data_home="$root/xdg-data"
link="$data_home/tracel/$BUNDLER_DIR"
marker="$link/.tracel-llvm-installed"

if [[ $print_only == 1 ]]; then
    echo "$data_home"
    exit 0
fi

say() { echo "llvm_from_pypi: $*" >&2; }

if [[ -f "$marker" && -x "$link/bin/llvm-config" ]]; then
    say "already set up: $link ($("$link/bin/llvm-config" --version))"
    echo "$data_home"
    exit 0
fi

command -v unzip >/dev/null || { say "error: 'unzip' is needed"; exit 2; }
read -r -a pip <<<"${PIP:-python3 -m pip}"

wheels="$root/wheels"
mkdir -p "$wheels"
for pkg in "${PACKAGES[@]}"; do
    name="${pkg%%==*}"
    if ! ls "$wheels"/"${name//-/_}"-*.whl >/dev/null 2>&1; then
        say "downloading $pkg"
        "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$wheels" "$pkg"
    fi
done

# Both wheels unpack into the same `mlc_llvm_static/static` tree (bin, lib,
# include); the second adds the NVPTX and AMDGPU libraries to the first.
unpacked="$root/unpacked"
rm -rf "$unpacked.tmp"
mkdir -p "$unpacked.tmp"
for whl in "$wheels"/*.whl; do
    unzip -q -o "$whl" -d "$unpacked.tmp"
done
static="$unpacked.tmp/mlc_llvm_static/static"
[[ -d "$static/bin" && -d "$static/lib" ]] || { say "error: $static lacks bin/ or lib/ (wheel layout changed?)"; exit 2; }
chmod +x "$static"/bin/* 2>/dev/null || true
rm -rf "$unpacked"
mv "$unpacked.tmp" "$unpacked"
static="$unpacked/mlc_llvm_static/static"

"$static/bin/llvm-config" --targets-built | grep -q NVPTX || { say "error: NVPTX missing from $static"; exit 2; }

mkdir -p "$data_home/tracel"
ln -sfn "$static" "$link"
touch "$marker"
say "set up $link ($("$link/bin/llvm-config" --version), targets: $("$link/bin/llvm-config" --targets-built))"
echo "$data_home"
