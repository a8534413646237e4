#!/usr/bin/env python3
"""The project's check on a GPU: ept on `--device cuda` against the committed references,
against itself on the CPU, and against PyTorch on the same GPU in the same run.

Called by scripts/device_check.sh on a lent GPU machine; here, as a dry run, with
`--device cpu` (everything but the GPU). Writes under --out:

    summary.md     the tables (parity, training, step times, SST-2 epoch, memory)
    summary.json   the same numbers
    logs/          every command's stdout and stderr

Parity: every committed T5 and decoder fixture (`tests/fixtures/{t5,llama}/*/reference.json`)
and the organism (`tests/fixtures/organism/transformers_losses.json`): `ept eval` on the device
in f32 against transformers (1e-4 relative) and against the CPU (1e-4); bf16-mixed against the
CPU's bf16-mixed (5e-3). Training: a short organism run on the device and on the CPU, same seed:
validation accuracy and final loss side by side. Speed: `ept bench --device D` and
`bench_pytorch.py --device D` (eager, autocast for bf16-mixed), alternated, at T5-small and
T5-base shapes and a SmolLM2-135M-shaped decoder, PT and EPT; one SST-2-shaped epoch, ept's length buckets against PyTorch's
padded pipeline. Peak GPU memory: PyTorch's max_memory_allocated, and for ept the highest
`nvidia-smi` reading for its process (all its memory, allocator pools included).

Exit status 1 when a parity or training check fails; the speed tables never fail the check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


class Runner:
    def __init__(self, out: Path, ept: str, timeout: int, budget: float):
        self.deadline = time.time() + budget
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ept = ept
        self.timeout = timeout
        self.n = 0

    def run(self, name: str, cmd: list[str], gpu_memory: bool = False) -> tuple[int, str, float | None]:
        """Runs `cmd`, logs it; returns (status, stdout, peak GPU MiB of its process or None)."""
        self.n += 1
        stem = self.logs / f"{self.n:02d}-{name}"
        left = self.deadline - time.time()
        if left < 5:
            # Past the budget: the summary still gets written, with this row empty.
            print(f"[skipped] {name}: the --budget is spent", flush=True)
            return 124, "", None
        timeout = min(self.timeout, left)
        stem.with_suffix(".cmd").write_text(" ".join(cmd) + "\n")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        peak = [None]
        stop = threading.Event()
        if gpu_memory:
            threading.Thread(target=poll_gpu_memory, args=(proc.pid, peak, stop), daemon=True).start()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n[device_check: killed after {timeout:.0f} s]\n"
        stop.set()
        stem.with_suffix(".out").write_text(out)
        stem.with_suffix(".err").write_text(err)
        print(f"[{time.time() - t0:6.1f} s] {name}: exit {proc.returncode}", flush=True)
        if proc.returncode != 0:
            tail = err.strip().splitlines()[-3:]
            print("    " + "\n    ".join(tail), flush=True)
        return proc.returncode, out, peak[0]


def poll_gpu_memory(pid: int, peak: list, stop: threading.Event) -> None:
    """Highest `used_memory` nvidia-smi reports for process `pid`, every 100 ms."""
    while not stop.is_set():
        try:
            q = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5,
            ).stdout
            for line in q.splitlines():
                p, mib = [x.strip() for x in line.split(",")[:2]]
                if p == str(pid) and mib.isdigit():
                    peak[0] = max(peak[0] or 0, int(mib))
        except (OSError, subprocess.SubprocessError, ValueError):
            return
        stop.wait(0.1)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-6)


def eval_loss(r: Runner, name: str, model: str, device: str, dtype: str, data: list[str]) -> float | None:
    code, out, _ = r.run(name, [r.ept, "eval", "--model", model, "--device", device, "--dtype", dtype,
                                "--json", *data])
    if code != 0:
        return None
    return json.loads(out)["loss"]


def parity(r: Runner, device: str, quick: bool) -> list[dict]:
    rows = []
    # Every T5 fixture; the decoders with GQA, MQA + llama3 RoPE, biases and a sliding window.
    decoders = ("llama-gqa", "llama3-mqa-tied", "qwen2-bias", "mistral-window-sharded")
    fixtures = sorted(FIX.glob("t5/*/reference.json")) + [
        f for f in sorted(FIX.glob("llama/*/reference.json")) if f.parent.name in decoders]
    # The 4-bit folders transformers + bitsandbytes wrote (their texts are their sources').
    fixtures += sorted(FIX.glob("nf4/*/reference.json"))
    if quick:
        fixtures = [f for f in fixtures if f.parent.name in ("relu-tied", "llama-gqa")]
    tmp = Path(tempfile.mkdtemp(prefix="ept-device-check-"))
    for ref_path in fixtures:
        ref = json.loads(ref_path.read_text())
        model = ref_path.parent
        if "mean_loss_f32" in ref:  # a 4-bit folder: the decoded weights' loss, the source's texts
            texts = json.loads((ROOT / ref["source"] / "reference.json").read_text())["examples"]
            ref = {"mean_loss": ref["mean_loss_f32"], "examples": texts}
        name = f"{model.parent.name}/{model.name}"
        data = tmp / f"{model.parent.name}-{model.name}.jsonl"
        data.write_text("".join(json.dumps({"source": e["source"], "target": e["target"]}) + "\n"
                                for e in ref["examples"]))
        args = ["--data", str(data)]
        row = {"model": name, "transformers_f32": ref["mean_loss"]}
        for dtype in ("f32", "bf16-mixed"):
            row[f"cpu_{dtype}"] = eval_loss(r, f"eval-{model.name}-cpu-{dtype}", str(model), "cpu", dtype, args)
            row[f"dev_{dtype}"] = eval_loss(r, f"eval-{model.name}-{device}-{dtype}", str(model), device, dtype, args)
        rows.append(row)
    organism = json.loads((FIX / "organism" / "transformers_losses.json").read_text())["losses"]
    for task, want in organism.items():
        if task not in (("toy-sst2",) if quick else ("toy-sst2", "toy-mnli")):
            continue
        args = ["--task", task, "--split", want["split"]]
        row = {"model": f"organism {task}", "transformers_f32": want["loss"],
               "transformers_bf16_mixed": want.get("bf16_mixed_loss")}
        for dtype in ("f32", "bf16-mixed"):
            row[f"cpu_{dtype}"] = eval_loss(r, f"eval-organism-{task}-cpu-{dtype}", "assets/organism", "cpu", dtype, args)
            row[f"dev_{dtype}"] = eval_loss(r, f"eval-organism-{task}-{device}-{dtype}", "assets/organism", device, dtype, args)
        rows.append(row)
    for row in rows:
        checks = []
        if row["dev_f32"] is not None:
            checks.append(rel(row["dev_f32"], row["transformers_f32"]) <= 1e-4)
            if row["cpu_f32"] is not None:
                checks.append(rel(row["dev_f32"], row["cpu_f32"]) <= 1e-4)
        if row["dev_bf16-mixed"] is not None and row["cpu_bf16-mixed"] is not None:
            checks.append(rel(row["dev_bf16-mixed"], row["cpu_bf16-mixed"]) <= 5e-3)
        row["ok"] = len(checks) == 3 and all(checks)
    return rows


def training(r: Runner, device: str, steps: int) -> dict:
    res = {}
    for dev in dict.fromkeys([device, "cpu"]):
        runs = r.out / "runs"
        cmd = [r.ept, "train", "--model", "assets/organism", "--task", "toy-sst2", "--method", "ept",
               "--max-steps", str(steps), "--eval-every", str(steps), "--warmup-steps", "20",
               "--device", dev, "--runs-dir", str(runs), "--name", f"sst2-{dev}", "--overwrite", "--quiet"]
        code, _, peak = r.run(f"train-{dev}", cmd, gpu_memory=dev != "cpu")
        result = runs / f"sst2-{dev}" / "results.json"
        if code == 0 and result.is_file():
            j = json.loads(result.read_text())
            res[dev] = {"validation": j["validation"]["selection"], "loss": j["validation"]["loss"],
                        "wall_s": j["wall_seconds"], "peak_gpu_mib": peak}
        else:
            res[dev] = None
    d, c = res.get(device), res.get("cpu")
    # The device run reaches the CPU run's accuracy (one point of slack for ties at the boundary).
    res["ok"] = bool(d and c and d["validation"] >= c["validation"] - 1.0)
    return res


def bench(r: Runner, device: str, python: str, quick: bool) -> list[dict]:
    rows = []
    # T5 as the paper's main backbone; SmolLM2-135M as a Llama-family decoder (PEFT's CAUSAL_LM).
    shapes = [("t5-small", 16, 128), ("t5-base", 8, 256), ("smollm2-135m", 8, 128)]
    if quick:
        shapes = [("t5-small", 2, 32)]
    steps = ["--steps", "2", "--warmup", "1"] if quick else ["--steps", "10", "--warmup", "3"]
    for shape, batch, length in shapes:
        for method in ("pt", "ept"):
            for dtype in ("f32", "bf16-mixed"):
                common = ["--shape", shape, "--method", method, "--dtype", dtype, "--batch", str(batch),
                          "--len", str(length), *steps, "--json"]
                tag = f"{shape}-{method}-{dtype}"
                code, out, peak = r.run(f"bench-ept-{tag}", [r.ept, "bench", "--device", device, *common],
                                        gpu_memory=device != "cpu")
                ept = json.loads(out) if code == 0 else None
                code, out, _ = r.run(f"bench-torch-{tag}", [python, "scripts/bench_pytorch.py", "--device",
                                                            device, "--attn", "eager", *common])
                torch = json.loads(out) if code == 0 else None
                rows.append({
                    "shape": shape, "method": method, "dtype": dtype, "batch": batch, "len": length,
                    "ept_s": ept and ept["median_s"], "torch_s": torch and torch["median_s"],
                    "ratio": ept and torch and ept["median_s"] / torch["median_s"],
                    "ept_peak_gpu_mib": peak, "torch_peak_gpu_mib": torch and torch.get("peak_gpu_mib"),
                })
    return rows


def epoch(r: Runner, device: str, python: str, quick: bool) -> dict:
    export = r.out / "sst2-epoch"
    # Prompt tuning (l = 100): the method PEFT implements, which bench_pytorch.py's task level replays.
    shape, examples, m = ("t5-small", 64, 128) if quick else ("t5-base", 2048, 256)
    common = ["--shape", shape, "--method", "pt", "--task", "sst2", "--examples", str(examples),
              "--len", str(m), "--dtype", "bf16-mixed", "--json"]
    code, out, peak = r.run("epoch-ept", [r.ept, "bench", "--device", device, *common, "--export", str(export)],
                            gpu_memory=device != "cpu")
    ept = json.loads(out) if code == 0 else None
    code, out, _ = r.run("epoch-torch", [python, "scripts/bench_pytorch.py", "--device", device, "--attn", "eager",
                                         "--dtype", "bf16-mixed", "--task-dir", str(export), "--json"])
    torch = json.loads(out) if code == 0 else None
    wall = lambda j: j and (j.get("epoch_s") or j.get("wall_s"))  # noqa: E731
    return {"shape": shape, "examples": examples, "ept": ept, "torch": torch,
            "ept_epoch_s": wall(ept), "torch_epoch_s": wall(torch), "ept_peak_gpu_mib": peak,
            "speedup": wall(ept) and wall(torch) and wall(torch) / wall(ept)}


def fmt(x, spec=".6f"):
    return "—" if x is None else format(x, spec)


def markdown(s: dict) -> str:
    out = [f"# Device check, {s['date']}", "", f"Device: {s['device_line']}", "",
           "## Parity (mean loss over each fixture)", "",
           "| model | transformers f32 | cpu f32 | device f32 | cpu bf16-mixed | device bf16-mixed | ok |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in s["parity"]:
        out.append(f"| {p['model']} | {fmt(p['transformers_f32'])} | {fmt(p['cpu_f32'])} | {fmt(p['dev_f32'])} | "
                   f"{fmt(p['cpu_bf16-mixed'])} | {fmt(p['dev_bf16-mixed'])} | {'yes' if p['ok'] else 'NO'} |")
    t = s["training"]
    out += ["", "## Organism training (toy-sst2, EPT, same seed)", "", "| device | validation | loss | wall s | peak GPU MiB |",
            "| --- | --- | --- | --- | --- |"]
    for dev, v in t.items():
        if dev != "ok":
            out.append(f"| {dev} | " + (" | ".join([fmt(v['validation'], '.2f'), fmt(v['loss'], '.4f'),
                                                  fmt(v['wall_s'], '.1f'), fmt(v['peak_gpu_mib'], '.0f')])
                                        if v else "failed | | |") + " |")
    out += ["", "## Training step (median s), ept vs PyTorch eager on the same device", "",
            "| shape | method | dtype | batch × len | ept | PyTorch | ept ÷ PyTorch | ept peak MiB | PyTorch peak MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in s["bench"]:
        out.append(f"| {b['shape']} | {b['method']} | {b['dtype']} | {b['batch']} × {b['len']} | {fmt(b['ept_s'], '.4f')} | "
                   f"{fmt(b['torch_s'], '.4f')} | {fmt(b['ratio'], '.2f')} | {fmt(b['ept_peak_gpu_mib'], '.0f')} | "
                   f"{fmt(b['torch_peak_gpu_mib'], '.0f')} |")
    e = s["epoch"]
    out += ["", f"## SST-2-shaped epoch ({e['shape']}, PT l = 100, bf16-mixed, {e['examples']} examples, batches of 32)", "",
            f"ept (length buckets): {fmt(e['ept_epoch_s'], '.2f')} s; PyTorch + PEFT-style padded: "
            f"{fmt(e['torch_epoch_s'], '.2f')} s; speed-up {fmt(e['speedup'], '.2f')}×", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ept", required=True, help="the ept binary (a CUDA build on the GPU machine)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N; cpu for a dry run")
    p.add_argument("--out", default=os.environ.get("OUT", "device-out"))
    p.add_argument("--python", default=sys.executable, help="the interpreter with torch for bench_pytorch.py")
    p.add_argument("--quick", action="store_true", help="a few fixtures and small shapes (the dry run)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--timeout", type=int, default=300, help="seconds per command")
    p.add_argument("--budget", type=float, default=540,
                   help="seconds for the whole check: commands past it are skipped, the summary is still written")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: parity,training,bench,epoch")
    args = p.parse_args(argv)
    out = Path(args.out)
    r = Runner(out, args.ept, args.timeout, args.budget)
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.time()
    _, devices, _ = r.run("devices", [args.ept, "inspect", "--devices"])
    line = next((ln for ln in devices.splitlines() if ln.startswith(args.device.split(":")[0])), args.device)
    s = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device, "device_line": line.strip(),
         "parity": [], "training": {"ok": True}, "bench": [], "epoch": {}}
    if "parity" not in skip:
        s["parity"] = parity(r, args.device, args.quick)
    if "training" not in skip:
        s["training"] = training(r, args.device, 40 if args.quick else args.train_steps)
    if "bench" not in skip:
        s["bench"] = bench(r, args.device, args.python, args.quick)
    if "epoch" not in skip:
        s["epoch"] = epoch(r, args.device, args.python, args.quick)
    else:
        s["epoch"] = {"shape": "-", "examples": 0, "ept_epoch_s": None, "torch_epoch_s": None, "speedup": None}
    s["wall_s"] = time.time() - t0
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    (out / "summary.md").write_text(markdown(s))
    print(markdown(s))
    ok = all(p["ok"] for p in s["parity"]) and s["training"]["ok"]
    print(f"\ndevice check: {'passed' if ok else 'FAILED'} in {s['wall_s']:.0f} s; results in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
