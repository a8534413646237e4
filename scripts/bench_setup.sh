# Shared set-up of the benchmark scripts, sourced after their argument parsing:
# the same thread count on both sides, the ept binary (built if missing), the
# output folder (a temporary one, removed at exit, unless --out named one).
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
BIN="${EPT_BIN:-target/release/ept}"
if [ ! -x "$BIN" ]; then
    cargo build --release >&2
fi
if [ -z "$OUT" ]; then
    OUT="$(mktemp -d)"
    trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"
