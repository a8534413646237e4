#!/usr/bin/env bash
# Times the same prompt-tuning step in ept (`ept bench`) and in PyTorch +
# transformers (scripts/bench_pytorch.py), one workload per process so that the
# peak resident memory is the workload's, and prints a Markdown table.
#
#   scripts/bench_vs_pytorch.sh [--full] [--v11] [--decoder] [--no-t5-small] [--steps N] [--warmup W]
#                               [--threads T] [--attn sdpa|eager] [--out DIR]
#                               [--dtype f32|bf16-mixed] [--rounds R] [--device cpu|cuda[:N]]
#
# Default set: T5-small PT l=100 and EPT s=60 r=30 (4 experts, cross-attention
# fusion, m = len), batch 16 x 128 tokens. --full adds T5-base PT and EPT at
# 8 x 256; --v11 adds T5 v1.1-small (gated-GELU) PT and EPT at 16 x 128; --decoder adds
# SmolLM2-135M-shaped PT and EPT at 8 x 128 (a Llama-family decoder, PEFT's CAUSAL_LM
# composition); --no-t5-small drops the default T5-small pair. Both sides get the same thread count (RAYON_NUM_THREADS for ept's
# burn-flex, torch.set_num_threads for PyTorch; default 2). --out keeps the
# JSON reports. --dtype bf16-mixed runs both sides in bf16 mixed precision
# (ept `--dtype bf16-mixed`, PyTorch under torch.autocast(cpu, bfloat16)).
# --rounds R (default 1) repeats every workload R times, ept then PyTorch each
# round, and reports each side's median over the rounds and the median of the
# per-round ratios: on a noisy shared machine the two runs of one round see
# the same conditions, so the paired ratio is steadier than either time. EPT_BIN overrides the ept binary (default target/release/ept,
# built if missing); PYTHON the interpreter that runs bench_pytorch.py (default python3).
# --device DEV (default cpu) is passed to both sides (`ept bench --device`,
# bench_pytorch.py --device), so that both always run on the same device.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=5 WARMUP=2 THREADS=2 DTYPE=f32 FULL=0 V11=0 DECODER=0 T5_SMALL=1 ATTN=sdpa OUT="" ROUNDS=1 DEVICE=cpu
while [ $# -gt 0 ]; do
    case "$1" in
        --full) FULL=1 ;;
        --v11) V11=1 ;;
        --decoder) DECODER=1 ;;
        --no-t5-small) T5_SMALL=0 ;;
        --steps) STEPS="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --dtype) DTYPE="$2"; shift ;;
        --attn) ATTN="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --device) DEVICE="$2"; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "bench_vs_pytorch.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

. scripts/bench_setup.sh

DEVICE_ARGS=(--device "$DEVICE")

WORKLOADS=()
if [ "$T5_SMALL" = 1 ]; then
    WORKLOADS+=("t5-small pt" "t5-small ept")
fi
if [ "$FULL" = 1 ]; then
    WORKLOADS+=("t5-base pt" "t5-base ept")
fi
if [ "$V11" = 1 ]; then
    WORKLOADS+=("t5-v1_1-small pt" "t5-v1_1-small ept")
fi
if [ "$DECODER" = 1 ]; then
    WORKLOADS+=("smollm2-135m pt" "smollm2-135m ept")
fi
if [ "${#WORKLOADS[@]}" = 0 ]; then
    echo "bench_vs_pytorch.sh: no workload left (--no-t5-small without --full, --v11 or --decoder)" >&2
    exit 2
fi

for round in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        read -r shape method <<<"$w"
        echo "== round $round, $shape $method: ept" >&2
        "$BIN" bench --shape "$shape" --method "$method" --steps "$STEPS" --warmup "$WARMUP" \
            --dtype "$DTYPE" ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} --json >"$OUT/ept-$shape-$method-$round.json"
        echo "== round $round, $shape $method: PyTorch" >&2
        "${PYTHON:-python3}" scripts/bench_pytorch.py --shape "$shape" --method "$method" --steps "$STEPS" \
            --warmup "$WARMUP" --threads "$THREADS" --attn "$ATTN" --dtype "$DTYPE" \
            ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} --json \
            >"$OUT/torch-$shape-$method-$round.json"
    done
done

python3 - "$OUT" "$STEPS" "$WARMUP" "$THREADS" "$DTYPE" "$ROUNDS" "${WORKLOADS[@]}" <<'PY'
import json, os, platform, statistics, subprocess, sys, datetime

out, steps, warmup, threads, dtype, rounds, *workloads = sys.argv[1:]
rounds = int(rounds)

def load(side, shape, method):
    """The side's report for the workload, its numbers the medians over the rounds."""
    runs = []
    for r in range(1, rounds + 1):
        with open(os.path.join(out, f"{side}-{shape}-{method}-{r}.json")) as f:
            runs.append(json.load(f))
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(run[key] for run in runs)
    merged["min_s"] = min(run["min_s"] for run in runs)
    merged["rounds"] = [run["median_s"] for run in runs]
    return merged

def paired_ratio(e, t):
    """Median over the rounds of ept's step ÷ PyTorch's step in the same round."""
    return statistics.median(a / b for a, b in zip(e["rounds"], t["rounds"]))

def cpu():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

runs = {}
for w in workloads:
    shape, method = w.split()
    runs[(shape, method)] = (load("ept", shape, method), load("torch", shape, method))

first_e, first_t = next(iter(runs.values()))
print(f"{datetime.date.today()}, {cpu()}, {os.cpu_count()} CPUs visible, {threads} threads each side; "
      f"{steps} measured steps after {warmup} warm-up; precision {dtype} on both sides; "
      f"{rounds} round(s), ept then PyTorch in each (step times: medians over the rounds; "
      f"ratio: median of the per-round ratios).")
print(f"ept: {first_e['implementation']}, allocator: {first_e['allocator']}; "
      f"threads asked {first_e['threads']}, in the process {first_e.get('process_threads', '?')}.")
print(f"PyTorch: {first_t['implementation']}, attention `{first_t.get('attn_implementation', '?')}`, "
      f"{first_t['threads']} threads.")
print()
print("| workload | ept step (s) | PyTorch step (s) | ept ÷ PyTorch | ept tok/s | PyTorch tok/s "
      "| ept peak RSS (MiB) | PyTorch peak RSS (MiB) | ept ÷ PyTorch RSS |")
print("|---|---|---|---|---|---|---|---|---|")
for (shape, method), (e, t) in runs.items():
    s = e["settings"]
    name = {"pt": f"PT l={s['l']}", "ept": f"EPT s={s['s']} r={s['r']}", "none": "no prompt"}[method]
    label = f"{shape} {name} ({s['batch']}×{s['len']})"
    print(f"| {label} | {e['median_s']:.3f} (min {e['min_s']:.3f}) | {t['median_s']:.3f} (min {t['min_s']:.3f}) "
          f"| {paired_ratio(e, t):.2f} | {e['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} "
          f"| {e['peak_rss_mib']:.0f} | {t['peak_rss_mib']:.0f} | {e['peak_rss_mib'] / t['peak_rss_mib']:.2f} |")
print()
print("Forward / backward medians (s); memory before the model was built (PyTorch: after importing torch).")
print()
print("| workload | ept fwd | ept bwd | PyTorch fwd | PyTorch bwd | ept start RSS (MiB) | PyTorch import RSS (MiB) |")
print("|---|---|---|---|---|---|---|")
for (shape, method), (e, t) in runs.items():
    print(f"| {shape} {method} | {e['forward_median_s']:.3f} | {e['backward_median_s']:.3f} "
          f"| {t['forward_median_s']:.3f} | {t['backward_median_s']:.3f} "
          f"| {e['start_rss_mib']:.0f} | {t.get('import_rss_mib', float('nan')):.0f} |")
shapes = list(dict.fromkeys(s for s, _ in runs))
pairs = [s for s in shapes if (s, "pt") in runs and (s, "ept") in runs]
if pairs:
    print()
    print("| shape | ept: EPT ÷ PT step | PyTorch: EPT ÷ PT step | ept: EPT ÷ PT RSS | PyTorch: EPT ÷ PT RSS |")
    print("|---|---|---|---|---|")
    for s in pairs:
        (ep, tp), (ee, te) = runs[(s, "pt")], runs[(s, "ept")]
        print(f"| {s} | {paired_ratio(ee, ep):.2f} | {paired_ratio(te, tp):.2f} "
              f"| {ee['peak_rss_mib'] / ep['peak_rss_mib']:.2f} | {te['peak_rss_mib'] / tp['peak_rss_mib']:.2f} |")
PY
