#!/usr/bin/env bash
# Evaluation benchmark: scoring the validation examples of an SST-2-shaped and an
# RTE-shaped workload once (T5-small shape, random weights, PT l=100, batches of 32),
#   PyTorch + PEFT   greedy generation, every input padded to 256: DePT's evaluation
#                    (PEFT's generate, one beam, at most 20 new tokens; DePT's trainer also
#                    runs a loss pass per batch, not counted here)
#   PyTorch + PEFT   the same generation on ept's length-sorted batches, and label ranking
#                    (one encoder pass per batch, one decoder pass per label)
#   ept              generation and ranking on length-sorted batches (what `ept eval` does,
#                    `--scoring generate|rank`), and generation padded to 256
# and prints a Markdown table with each side's predictions compared.
#
#   scripts/bench_eval_vs_pytorch.sh [--examples N] [--threads T] [--out DIR]
#                                    [--dtype f32|bf16-mixed]
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
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "bench_eval_vs_pytorch.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

. scripts/bench_setup.sh

for task in sst2 rte; do
    common=(bench --task "$task" --examples "$EXAMPLES" --dtype "$DTYPE" --json)
    echo "== $task: ept, generate and rank on sorted batches (and export), generate padded" >&2
    "$BIN" "${common[@]}" --eval generate --export "$OUT/$task" >"$OUT/ept-gen-$task.json"
    "$BIN" "${common[@]}" --eval rank >"$OUT/ept-rank-$task.json"
    "$BIN" "${common[@]}" --eval generate --pad-to 256 >"$OUT/ept-gen-padded-$task.json"
    echo "== $task: PyTorch + PEFT, generate padded (DePT's way) and sorted, rank sorted" >&2
    py=(python3 scripts/bench_pytorch.py --task-dir "$OUT/$task" --threads "$THREADS"
        --dtype "$DTYPE" --json)
    "${py[@]}" --eval generate --pad-to 256 >"$OUT/torch-gen-padded-$task.json"
    "${py[@]}" --eval generate --pad-to 0 >"$OUT/torch-gen-$task.json"
    "${py[@]}" --eval rank --pad-to 0 >"$OUT/torch-rank-$task.json"
    rm -rf "$OUT/$task/model"
done

python3 - "$OUT" "$EXAMPLES" "$THREADS" "$DTYPE" <<'PY'
import datetime, json, os, sys

out, examples, threads, dtype = sys.argv[1:]
load = lambda name: json.load(open(os.path.join(out, name)))
same = lambda a, b: sum(x == y for x, y in zip(a["predictions"], b["predictions"]))
print(f"{datetime.date.today()}, {os.cpu_count()} CPUs visible, {threads} threads each side; "
      f"{examples} examples scored once, T5-small shape (random weights), PT l=100, batches of 32, "
      f"generation of at most 20 tokens; precision {dtype} on both sides.")
print()
print("| task | PyTorch generate, padded 256 (DePT) (s) | PyTorch generate, sorted (s) "
      "| PyTorch rank, sorted (s) | ept generate, padded 256 (s) | ept generate, sorted (s) "
      "| ept rank, sorted (s) | DePT's way ÷ ept rank | DePT's way ÷ ept generate "
      "| same predictions, generate / rank | peak RSS MiB: PyTorch DePT / ept generate / ept rank |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for task in ("sst2", "rte"):
    tp, tg, tr = (load(f"torch-{k}-{task}.json") for k in ("gen-padded", "gen", "rank"))
    ep, eg, er = (load(f"ept-{k}-{task}.json") for k in ("gen-padded", "gen", "rank"))
    print(f"| {task}-shaped | {tp['eval_s']:.1f} | {tg['eval_s']:.1f} | {tr['eval_s']:.1f} "
          f"| {ep['eval_s']:.1f} | {eg['eval_s']:.1f} | {er['eval_s']:.1f} "
          f"| {tp['eval_s'] / er['eval_s']:.2f} | {tp['eval_s'] / eg['eval_s']:.2f} "
          f"| {same(eg, tp)}/{len(eg['predictions'])} / {same(er, tr)}/{len(er['predictions'])} "
          f"| {tp['peak_rss_mib']:.0f} / {eg['peak_rss_mib']:.0f} / {er['peak_rss_mib']:.0f} |")
PY
