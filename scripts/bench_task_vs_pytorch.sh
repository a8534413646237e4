#!/usr/bin/env bash
# Task-level benchmark: one training epoch of an SST-2-shaped and an RTE-shaped
# workload (T5-small shape, random weights, PT l=100, batches of 32), three ways:
#   ept buckets   `ept bench --task T`: length buckets, each batch padded to its longest
#                 input (what `ept train` does); it also exports the workload
#   ept padded    `ept bench --task T --pad-to 256`: every input padded to 256 (DePT's way)
#   PyTorch+PEFT  `scripts/bench_pytorch.py --task-dir`: DePT's pipeline on the exported
#                 model, examples and initial prompt, every input padded to 256
# and prints a Markdown table. The loss at the initial prompt must agree across all three.
#
#   scripts/bench_task_vs_pytorch.sh [--examples N] [--threads T] [--out DIR]
#                                    [--dtype f32|bf16-mixed]
#
# --dtype bf16-mixed: ept with `--dtype bf16-mixed`, PyTorch under bf16 autocast.
#
# EPT_BIN overrides the ept binary (default target/release/ept, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES=256 THREADS=2 DTYPE=f32 OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --examples) EXAMPLES="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --dtype) DTYPE="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "bench_task_vs_pytorch.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

. scripts/bench_setup.sh

for task in sst2 rte; do
    echo "== $task: ept, buckets (and export)" >&2
    "$BIN" bench --task "$task" --examples "$EXAMPLES" --export "$OUT/$task" \
        --dtype "$DTYPE" --json >"$OUT/ept-$task.json"
    echo "== $task: ept, padded to 256" >&2
    "$BIN" bench --task "$task" --examples "$EXAMPLES" --pad-to 256 \
        --dtype "$DTYPE" --json >"$OUT/ept-padded-$task.json"
    echo "== $task: PyTorch + PEFT, padded to 256" >&2
    python3 scripts/bench_pytorch.py --task-dir "$OUT/$task" --pad-to 256 --threads "$THREADS" \
        --dtype "$DTYPE" --json \
        >"$OUT/torch-$task.json"
    rm -rf "$OUT/$task/model"
done

python3 - "$OUT" "$EXAMPLES" "$THREADS" "$DTYPE" <<'PY'
import datetime, json, os, sys

out, examples, threads, dtype = sys.argv[1:]
load = lambda name: json.load(open(os.path.join(out, name)))
print(f"{datetime.date.today()}, {os.cpu_count()} CPUs visible, {threads} threads each side; "
      f"one epoch of {examples} examples, T5-small shape (random weights), PT l=100, batches of 32; "
      f"precision {dtype} on both sides.")
print()
print("| task | ept, buckets (s) | ept, padded 256 (s) | PyTorch + PEFT, padded 256 (s) "
      "| PyTorch ÷ ept buckets | input positions, buckets / padded | initial loss ept / PyTorch "
      "| epoch mean loss: buckets / ept padded / PyTorch | peak RSS MiB: buckets / padded / PyTorch |")
print("|---|---|---|---|---|---|---|---|---|")
for task in ("sst2", "rte"):
    e, p, t = load(f"ept-{task}.json"), load(f"ept-padded-{task}.json"), load(f"torch-{task}.json")
    rel = abs(e["initial_loss"] - t["initial_loss"]) / abs(t["initial_loss"])
    print(f"| {task}-shaped | {e['epoch_s']:.1f} | {p['epoch_s']:.1f} | {t['epoch_s']:.1f} "
          f"| {t['epoch_s'] / e['epoch_s']:.2f} | {e['padded_tokens']} / {t['padded_tokens']} "
          f"| {e['initial_loss']:.5f} / {t['initial_loss']:.5f} (rel. diff {rel:.1e}) "
          f"| {e['epoch_mean_loss']:.4f} / {p['epoch_mean_loss']:.4f} / {t['epoch_mean_loss']:.4f} "
          f"| {e['peak_rss_mib']:.0f} / {p['peak_rss_mib']:.0f} / {t['peak_rss_mib']:.0f} |")
PY
