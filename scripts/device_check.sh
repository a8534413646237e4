#!/usr/bin/env bash
# The project's check on a GPU machine: ept on CUDA against the committed
# references, against itself on the CPU, and against PyTorch on the same GPU,
# in one call (scripts/device_check.py does the work; docs/BENCHMARKS.md keeps
# the results).
#
#   scripts/device_check.sh pack        # here: CUDA build (offline LLVM from PyPI),
#                                       # stripped, xz-compressed into .device/ept.xz
#   scripts/device_check.sh run [DIR]   # on the GPU machine, in the repo root: DIR (default
#                                       # .device) holds ept.xz; results under $OUT
#   scripts/device_check.sh dry-run     # here: everything but the GPU (`--device cpu`,
#                                       # small shapes), with this machine's build
#
# On the `device` tool: carry [".device"], command `bash scripts/device_check.sh run`,
# timeout_s 600. The GPU machine has the NVIDIA driver, python3 with torch,
# transformers and peft, no Rust and no network: the binary travels, built here.
# .device/ is ignored by git (.gitignore). Extra arguments after `run` and
# `dry-run` go to device_check.py (e.g. --skip epoch, --train-steps 200).
set -euo pipefail
cd "$(dirname "$0")/.."

cmd="${1:-}"
shift || true
case "$cmd" in
pack)
    data_home="$(scripts/llvm_from_pypi.sh)"
    XDG_DATA_HOME="$data_home" CARGO_TARGET_DIR=target/gpu \
        cargo build --release --locked --features cuda --bin ept
    mkdir -p .device
    strip -o .device/ept target/gpu/release/ept
    xz -6 -T0 -f .device/ept
    ls -l .device/ept.xz
    size=$(stat -c %s .device/ept.xz)
    if (( size > 48 * 1024 * 1024 )); then
        echo "device_check: .device/ept.xz is $((size >> 20)) MiB: with the repository it may pass the 64 MiB carry limit" >&2
    fi
    ;;
run)
    dir="${1:-.device}"
    [[ $# -gt 0 ]] && shift
    [[ -f "$dir/ept.xz" ]] || { echo "device_check: $dir/ept.xz not found (scripts/device_check.sh pack)" >&2; exit 2; }
    out="${OUT:-device-out}"
    mkdir -p "$out"
    bin="$(mktemp -d)/ept"
    xz -dc "$dir/ept.xz" >"$bin"
    chmod +x "$bin"
    { nvidia-smi || echo "nvidia-smi failed"; } >"$out/nvidia-smi.txt" 2>&1
    head -15 "$out/nvidia-smi.txt"
    python3 scripts/device_check.py --ept "$bin" --device "${DEVICE:-cuda}" --out "$out" "$@"
    ;;
dry-run)
    bin="${EPT_BIN:-target/release/ept}"
    [[ -x "$bin" ]] || cargo build --release --locked --bin ept
    "${PYTHON:-python3}" scripts/device_check.py --ept "$bin" --device cpu --quick \
        --out "${OUT:-target/device-dry-run}" "$@"
    ;;
*)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac
