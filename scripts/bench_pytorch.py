#!/usr/bin/env python3
"""PyTorch + transformers counterpart of `ept bench`: the same prompt-tuning step
on a random-weight T5 or Llama-shaped decoder, timed the same way.

Decoder shapes (smollm2-135m, tinyllama-1.1b, llama2-7b): LlamaForCausalLM with
random weights; an example is BOS + random ids (`len` tokens) then a 2-4 token
target ending in EOS, right-padded; the prompt is prepended as PEFT's CAUSAL_LM
prompt tuning does (`decoder_inputs` of scripts/prompt_reference.py: [P_new ;
E + U], mask and -100 labels prefixed), and transformers computes the loss
(logits of every position, shifted cross-entropy over the target tokens).

One step: embed the batch, build the encoder input with the prompt (PT: l rows
prepended; EPT: docs/FORMAT.md's forward pass, through `PromptModule` of
scripts/prompt_reference.py), run T5ForConditionalGeneration with
`inputs_embeds` and `labels` (token-mean cross-entropy), backward, and read the
prompt's gradients (`torch.autograd.grad`, no optimiser). Every model weight
has `requires_grad=False`; the model is in eval mode (no dropout, as in ept).
`--method none` takes the gradient with respect to the input embeddings.

    python scripts/bench_pytorch.py --shape t5-small --method pt --steps 5 --warmup 2 [--json]

Task level (`--task-dir DIR`, written by `ept bench --task sst2|rte --export DIR`): one
training epoch of the exported workload as DePT's pipeline runs it: the same random model
(DIR/model, Hugging Face layout), the same examples and the same initial prompt
(DIR/prompt.safetensors), PEFT prompt tuning (`PromptTuningConfig`, the prompt copied in),
every input padded to `--pad-to` (DePT's max_source_length, 256), targets padded to the
batch's longest, a random order, torch AdamW (lr from the workload, no weight decay). Reports
the epoch's wall time, the token-mean loss over all examples at the initial prompt (must equal
ept's) and the mean batch loss of the epoch.

    python scripts/bench_pytorch.py --task-dir DIR [--pad-to 256] [--json]

Reports median / min / mean step time, the forward and backward medians,
input tokens per second at the median, and the process's peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`: the whole process, the Python
interpreter and the torch libraries included).

`--device cpu|cuda|cuda:N` (default cpu) runs either level on that device: the model
and the prompt are built on the CPU exactly as before (the same random weights, prompt and
batches whatever the device) and then moved there, every batch is moved before it is used,
and `--dtype bf16-mixed` autocasts on that device type. On CUDA every timed region (each
step, its forward part; the epoch or the scoring pass at task level) starts and ends with
`torch.cuda.synchronize()`, and the report adds the peak of `torch.cuda.max_memory_allocated`
(`peak_gpu_mib`, MiB; tensors only, not the caching allocator's reserve nor the CUDA
context), its statistics reset after set-up, just before the warm-up (task level: before the
untimed loss or the scoring pass), so the frozen weights count. `peak_gpu_mib` is null on the
CPU; `device` names the device ("cpu", "cuda:0 (NVIDIA H200)").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import sys
import time

SHAPES = {
    # layers, d_model, heads, d_ff, feed-forward, tied head; d_kv 64, vocab 32128
    "t5-small": dict(layers=6, d=512, heads=8, d_ff=2048, ff="relu", tied=True, batch=16, len=128),
    "t5-base": dict(layers=12, d=768, heads=12, d_ff=3072, ff="relu", tied=True, batch=8, len=256),
    "t5-v1_1-small": dict(layers=8, d=512, heads=6, d_ff=1024, ff="gated-gelu", tied=False,
                          batch=16, len=128),
}

DECODER_SHAPES = {
    # hidden, ffn, layers, heads, kv heads, vocab, rope theta, tied, bos, eos (the checkpoints' configs)
    "smollm2-135m": dict(d=576, ffn=1536, layers=30, heads=9, kv=3, vocab=49152, theta=1e5, tied=True,
                         bos=0, eos=0, batch=8, len=128),
    "tinyllama-1.1b": dict(d=2048, ffn=5632, layers=22, heads=32, kv=4, vocab=32000, theta=1e4, tied=False,
                           bos=1, eos=2, batch=4, len=128),
    "llama2-7b": dict(d=4096, ffn=11008, layers=32, heads=32, kv=32, vocab=32000, theta=1e4, tied=False,
                      bos=1, eos=2, batch=2, len=128),
}


def proc_status_mib(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def maxrss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_arg(value: str) -> str:
    """argparse type of --device: cpu, cuda or cuda:N."""
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", value):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, not {value!r}")
    return value


class Device:
    """The device the benchmark runs on (--device): where tensors go, the autocast device
    type, the clock's synchronisation and the peak of GPU memory."""

    def __init__(self, torch, spec: str):
        self.torch = torch
        if spec == "cpu":
            self.device = torch.device("cpu")
            self.name = "cpu"
            return
        if not torch.cuda.is_available():
            print(f"bench_pytorch: --device {spec} asked for, but torch.cuda.is_available() is false "
                  f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu",
                  file=sys.stderr)
            sys.exit(2)
        index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            print(f"bench_pytorch: --device {spec} asked for, but torch sees "
                  f"{torch.cuda.device_count()} CUDA device(s)", file=sys.stderr)
            sys.exit(2)
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)
        self.name = f"cuda:{index} ({torch.cuda.get_device_name(self.device)})"

    @property
    def type(self) -> str:
        return self.device.type

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def to(self, *tensors):
        """The tensors on the device (ordinary blocking copies; the same tensors on the CPU);
        one tensor for one, a tuple for several."""
        moved = tuple(t.to(self.device) for t in tensors)
        return moved if len(moved) > 1 else moved[0]

    def clock(self) -> float:
        """time.perf_counter() once the device has finished its queued work."""
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self):
        """Peak of torch.cuda.max_memory_allocated since reset_peak, MiB (None on the CPU)."""
        if not self.cuda:
            return None
        self.torch.cuda.synchronize(self.device)
        return self.torch.cuda.max_memory_allocated(self.device) / 2**20

    def allocator(self) -> str:
        if not self.cuda:
            return "glibc malloc, defaults (torch CPU allocator)"
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
        return ("torch CUDA caching allocator, " + (f"PYTORCH_CUDA_ALLOC_CONF={conf}" if conf else "defaults")
                + "; host: glibc malloc, defaults")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES) + sorted(DECODER_SHAPES), default="t5-small")
    p.add_argument("--batch", type=int)
    p.add_argument("--len", type=int)
    p.add_argument("--method", choices=["pt", "ept", "none"], default="pt")
    p.add_argument("--l", type=int, default=100)
    p.add_argument("--s", type=int, default=60)
    p.add_argument("--r", type=int, default=30)
    p.add_argument("--num-experts", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")),
                   help="torch.set_num_threads (the CPU's intra-op threads; matters for --device cpu)")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa",
                   help="transformers attention implementation (sdpa is its default)")
    p.add_argument("--dtype", choices=["f32", "bf16-mixed"], default="f32",
                   help="bf16-mixed: the step under torch.autocast(<device type>, dtype=torch.bfloat16)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (default), cuda or cuda:N: where the model, the prompt and the batches live")
    p.add_argument("--quantize", choices=["nf4", "fp4"],
                   help="the dense layers in 4 bits through transformers + bitsandbytes (CPU wheel)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--task-dir", help="task level: replay `ept bench --task ... --export DIR`")
    p.add_argument("--pad-to", type=int, default=256,
                   help="task level: pad every input to this length (0: length-sorted batches)")
    p.add_argument("--eval", choices=["generate", "rank"],
                   help="task level: score the examples once instead of training an epoch")
    p.add_argument("--max-new-tokens", type=int, default=20,
                   help="task level, --eval generate: the most tokens generated per example")
    return p.parse_args(argv)


def make_autocast(torch, dtype, device_type="cpu"):
    """The context the step runs in: bf16 autocast on `device_type` (PyTorch's mixed
    precision; on CPU: matrix products in bf16 through oneDNN, AMX where the CPU has it;
    on CUDA: through cuBLAS / cuDNN) or nothing."""
    import contextlib
    if dtype == "bf16-mixed":
        return lambda: torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def collate(torch, rows, pad_to):
    """Input ids and mask padded to max(pad_to, longest input); labels padded with -100."""
    width = max(pad_to, max(len(r["input_ids"]) for r in rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    t = max(len(r["label_ids"]) for r in rows)
    labels = torch.full((len(rows), t), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
        labels[i, : len(r["label_ids"])] = torch.tensor(r["label_ids"])
    return ids, mask, labels


def load_task(args):
    """The exported workload (see `ept bench --task ... --export`): its settings, the
    random model under PEFT prompt tuning with ept's initial prompt copied in, and the
    prompt's parameter."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from safetensors.torch import load_file
    from transformers import T5ForConditionalGeneration

    dev = Device(torch, args.device)
    torch.set_num_threads(args.threads)
    work = json.load(open(os.path.join(args.task_dir, "workload.json")))
    if work["settings"]["step"]["method"] != "pt":
        sys.exit("bench_pytorch: the task level replays PT only (PEFT's prompt tuning)")
    model = T5ForConditionalGeneration.from_pretrained(
        os.path.join(args.task_dir, "model"), dtype=torch.float32, attn_implementation=args.attn)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    prompt = load_file(os.path.join(args.task_dir, "prompt.safetensors"))["prompt"].float()
    n, d = prompt.shape
    cfg = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=n, token_dim=d,
                             num_transformer_submodules=1)
    pmodel = get_peft_model(model, cfg)
    with torch.no_grad():
        pmodel.prompt_encoder["default"].embedding.weight.copy_(prompt)
    # The frozen model and PEFT's prompt encoder (a submodule) onto the device.
    pmodel.to(dev.device)
    emb = pmodel.prompt_encoder["default"].embedding.weight
    params = [p for p in pmodel.parameters() if p.requires_grad]
    assert len(params) == 1 and params[0] is emb, [tuple(p.shape) for p in params]
    assert emb.device == dev.device and model.device == dev.device, (emb.device, model.device)
    return torch, dev, work, model, pmodel, emb


def run_eval(args) -> int:
    """Scores the exported examples once (`--eval generate|rank`, see the module docs)."""
    start_rss = proc_status_mib("VmRSS:")
    torch, dev, work, model, pmodel, emb = load_task(args)
    import transformers
    examples = work["examples"]
    batch = work["settings"]["step"]["batch"]
    autocast = make_autocast(torch, args.dtype, dev.type)
    eos = model.config.eos_token_id
    if args.pad_to > 0:
        # DePT: data order, every input padded to the same length.
        batches = [list(range(i, min(i + batch, len(examples)))) for i in range(0, len(examples), batch)]
    else:
        # ept's batches: sorted by input length (stable), each padded to its longest.
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    n_prompt = emb.shape[0]
    predictions = [None] * len(examples)
    padded, generated = 0, 0
    dev.reset_peak()
    t0 = dev.clock()
    with torch.no_grad(), autocast():
        for idx in batches:
            rows = [{"input_ids": examples[i]["input_ids"], "label_ids": [eos]} for i in idx]
            ids, mask, _ = collate(torch, rows, args.pad_to)
            padded += ids.numel()
            ids, mask = dev.to(ids, mask)
            if args.eval == "generate":
                # DePT's evaluation (src/trainer.py): PEFT's generate, greedy, one beam.
                out = pmodel.generate(input_ids=ids, attention_mask=mask,
                                      max_new_tokens=args.max_new_tokens, do_sample=False,
                                      num_beams=1)
                for k, i in enumerate(idx):
                    seq = []
                    for tok in out[k, 1:].tolist():  # past the decoder start
                        seq.append(tok)
                        if tok == eos:
                            break
                    predictions[i] = seq
                    generated += len(seq)
            else:
                # Label ranking with one encoder pass per batch, as ept does it: PEFT's
                # prompt prepended by hand (what PeftModelForSeq2SeqLM.forward does), then
                # one teacher-forced decoder pass per option on the cached encoder output.
                b = ids.shape[0]
                embeds = torch.cat([pmodel.get_prompt(batch_size=b).to(model.dtype),
                                    model.get_input_embeddings()(ids)], dim=1)
                full_mask = torch.cat([mask.new_ones(b, n_prompt), mask], dim=1)
                enc = model.get_encoder()(inputs_embeds=embeds, attention_mask=full_mask)
                scores = []
                for option in work["options"]:
                    labels = torch.tensor([option] * b, device=dev.device)
                    logits = model(encoder_outputs=enc, attention_mask=full_mask, labels=labels).logits
                    nll = torch.nn.functional.cross_entropy(
                        logits.float().transpose(1, 2), labels, reduction="none").sum(1)
                    scores.append(-nll)
                best = torch.stack(scores, 1).argmax(1).tolist()
                for k, i in enumerate(idx):
                    predictions[i] = best[k]
    eval_s = dev.clock() - t0
    peak_gpu = dev.peak_mib()
    report = {
        "implementation": f"PyTorch {torch.__version__} + transformers {transformers.__version__} + PEFT",
        "task": work["settings"]["task"], "examples": len(examples), "batch": batch,
        "pad_to": args.pad_to, "dtype": args.dtype, "attn_implementation": args.attn,
        "threads": torch.get_num_threads(), "scoring": args.eval,
        "max_new_tokens": args.max_new_tokens, "batches": len(batches), "padded_tokens": padded,
        "real_tokens": sum(len(r["input_ids"]) for r in examples),
        "eval_s": eval_s, "examples_per_s": len(examples) / eval_s, "generated_tokens": generated,
        "predictions": predictions, "start_rss_mib": start_rss, "peak_rss_mib": maxrss_mib(),
        "device": dev.name, "peak_gpu_mib": peak_gpu,
    }
    print_report(report, args.json)
    return 0


def print_report(report, json_out):
    if json_out:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            if k != "predictions":
                print(f"{k:22} {v}")


def run_task(args) -> int:
    """One epoch of the exported workload, DePT's way (see the module docs)."""
    start_rss = proc_status_mib("VmRSS:")
    torch, dev, work, model, pmodel, emb = load_task(args)
    import transformers
    st = work["settings"]["step"]
    examples = work["examples"]
    batch = st["batch"]
    lr = work["settings"]["lr"]
    # transformers' AdamW is gone in 5.x; torch's with Hugging Face's old eps.
    opt = torch.optim.AdamW([emb], lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    autocast = make_autocast(torch, args.dtype, dev.type)

    # The loss at the initial prompt, token-mean over every example (untimed).
    dev.reset_peak()
    total, tokens = 0.0, 0
    with torch.no_grad(), autocast():
        for i in range(0, len(examples), batch):
            ids, mask, labels = dev.to(*collate(torch, examples[i : i + batch], 0))
            logits = pmodel(input_ids=ids, attention_mask=mask, labels=labels).logits
            total += float(torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                reduction="sum"))
            tokens += int((labels != -100).sum())
    initial_loss = total / tokens

    g = torch.Generator().manual_seed(st["seed"])
    order = torch.randperm(len(examples), generator=g).tolist()
    t0 = dev.clock()
    losses, padded = [], 0
    for i in range(0, len(order), batch):
        rows = [examples[j] for j in order[i : i + batch]]
        ids, mask, labels = collate(torch, rows, args.pad_to)
        padded += ids.numel()
        ids, mask, labels = dev.to(ids, mask, labels)
        with autocast():
            loss = pmodel(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    epoch_s = dev.clock() - t0
    peak_gpu = dev.peak_mib()
    report = {
        "implementation": f"PyTorch {torch.__version__} + transformers {transformers.__version__} + PEFT",
        "task": work["settings"]["task"], "examples": len(examples), "batch": batch,
        "pad_to": args.pad_to, "dtype": args.dtype, "attn_implementation": args.attn, "threads": torch.get_num_threads(),
        "batches": len(losses), "padded_tokens": padded,
        "real_tokens": sum(len(r["input_ids"]) for r in examples),
        "epoch_s": epoch_s, "examples_per_s": len(examples) / epoch_s,
        "initial_loss": initial_loss, "epoch_mean_loss": statistics.fmean(losses),
        "start_rss_mib": start_rss, "peak_rss_mib": maxrss_mib(),
        "device": dev.name, "peak_gpu_mib": peak_gpu,
    }
    print_report(report, args.json)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.task_dir:
        return run_eval(args) if args.eval else run_task(args)
    decoder = args.shape in DECODER_SHAPES
    shape = DECODER_SHAPES[args.shape] if decoder else SHAPES[args.shape]
    if decoder and args.method == "none":
        sys.exit("bench_pytorch: decoder shapes need --method pt or ept")
    batch = args.batch or shape["batch"]
    length = args.len or shape["len"]
    if batch <= 0 or length <= 0 or args.steps <= 0:
        sys.exit("bench_pytorch: batch, len and steps must be positive")

    start_rss = proc_status_mib("VmRSS:")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import torch.nn as nn
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from prompt_reference import Expert, PromptModule, decoder_inputs, init_prompt_from_vocab, svd_decompose

    # Resident memory of the interpreter with torch and transformers loaded, before any model.
    import_rss = proc_status_mib("VmRSS:")
    dev = Device(torch, args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = shape["d"]
    if decoder:
        config = LlamaConfig(
            vocab_size=shape["vocab"], hidden_size=d, intermediate_size=shape["ffn"],
            num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv"], rope_theta=shape["theta"], rms_norm_eps=1e-5,
            tie_word_embeddings=shape["tied"], bos_token_id=shape["bos"], eos_token_id=shape["eos"],
            max_position_embeddings=2048,
        )
        config._attn_implementation = args.attn
        model = LlamaForCausalLM(config).float().eval()
        type_of_model = LlamaForCausalLM
    else:
        config = T5Config(
            vocab_size=32128, d_model=d, d_kv=64, d_ff=shape["d_ff"],
            num_layers=shape["layers"], num_decoder_layers=shape["layers"], num_heads=shape["heads"],
            relative_attention_num_buckets=32, relative_attention_max_distance=128,
            dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj=shape["ff"],
            tie_word_embeddings=shape["tied"], pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
        config._attn_implementation = args.attn
        model = T5ForConditionalGeneration(config).float().eval()
        type_of_model = T5ForConditionalGeneration
    if args.quantize:
        # QLoRA's way, as a user loads a 4-bit model: transformers + bitsandbytes
        # from a saved folder (the dense layers but lm_head and T5's wo in 4 bits,
        # double quantization), compute in bf16 under bf16-mixed, else f32. Train
        # mode (dropout is 0): bitsandbytes' CPU eval path repacks the weights.
        import tempfile
        from transformers import BitsAndBytesConfig
        folder = tempfile.mkdtemp(prefix="bench-4bit-")
        model.save_pretrained(folder)
        compute = torch.bfloat16 if args.dtype == "bf16-mixed" else torch.float32
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=args.quantize,
                                bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
        del model
        model = type_of_model.from_pretrained(folder, quantization_config=qc, dtype=torch.float32,
                                              attn_implementation=args.attn).train()
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    for p in model.parameters():
        p.requires_grad_(False)
    attn_impl = getattr(model.config, "_attn_implementation", args.attn)
    frozen = sum(p.numel() for p in model.parameters())

    g = torch.Generator().manual_seed(args.seed)
    emb = model.get_input_embeddings().weight
    if args.method == "pt":
        tensors = {"prompt": init_prompt_from_vocab(emb, args.l, g)}
        prompt = PromptModule(tensors, 1.0, "off", False)
    elif args.method == "ept":
        p_long = init_prompt_from_vocab(emb, args.l, g)
        a, b, _ = svd_decompose(p_long, length, args.r)
        tensors = {"prompt": p_long[: args.s].clone(), "lora_a": a, "lora_b": b}
        for i in range(args.num_experts):
            for k, v in Expert(d, length).state_dict().items():
                tensors[f"experts.{i}.{k}"] = v
        for k, v in nn.Linear(d, args.num_experts).state_dict().items():
            tensors[f"gate.{k}"] = v
        prompt = PromptModule(tensors, 1.0, "cross-attention", True)
    else:
        prompt = None
    params = list(prompt.parameters()) if prompt is not None else []
    prompt_rows = prompt.prompt.shape[0] if prompt is not None else 0

    # Inputs of exactly `length` tokens (</s> last), targets of 2-4 tokens (</s> last).
    ids = torch.randint(3, 32000, (batch, length), generator=g)
    ids[:, -1] = 1
    mask = torch.ones(batch, length, dtype=torch.long)
    lens = torch.randint(2, 5, (batch,), generator=g)
    labels = torch.full((batch, int(lens.max())), -100, dtype=torch.long)
    for i, n in enumerate(lens.tolist()):
        labels[i, : n - 1] = torch.randint(3, 32000, (n - 1,), generator=g)
        labels[i, n - 1] = 1
    n_tokens = int(lens.sum())
    if decoder:
        # BOS first; the text is source ++ target (EOS last), right-padded.
        ids[:, -1] = torch.randint(3, 32000, (batch,), generator=g)
        ids[:, 0] = shape["bos"]
        t = length + int(lens.max())
        text = torch.full((batch, t), shape["eos"], dtype=torch.long)
        mask = torch.zeros(batch, t, dtype=torch.long)
        dec_labels = torch.full((batch, t), -100, dtype=torch.long)
        for i, n in enumerate(lens.tolist()):
            target = labels[i, :n].clone()
            target[-1] = shape["eos"]
            text[i, :length] = ids[i]
            text[i, length:length + n] = target
            mask[i, :length + n] = 1
            dec_labels[i, length:length + n] = target
        ids, labels = text, dec_labels
    # Everything was built on the CPU (the same weights, prompt and batch on every device);
    # now onto the device. Module.to keeps the Parameter objects, so `params` stays valid.
    model.to(dev.device)
    if prompt is not None:
        prompt.to(dev.device)
    ids, mask, labels = dev.to(ids, mask, labels)
    setup_peak = maxrss_mib()

    autocast = make_autocast(torch, args.dtype, dev.type)

    def step():
        t0 = dev.clock()
        with autocast():
            embeds = model.get_input_embeddings()(ids)
            if prompt is None:
                x = embeds.detach().requires_grad_(True)
                m2, l2, wrt = mask, labels, [x]
            elif decoder:
                x, m2, l2, _, _ = decoder_inputs(prompt, embeds, mask, labels)
                wrt = params
            else:
                x, m2, _, _ = prompt.encoder_inputs(embeds, mask)
                l2, wrt = labels, params
            loss = model(inputs_embeds=x, attention_mask=m2, labels=l2).loss
        value = loss.item()
        t1 = dev.clock()
        grads = torch.autograd.grad(loss, wrt)
        norm = float(torch.sqrt(sum((gr.double() ** 2).sum() for gr in grads)))
        t2 = dev.clock()
        return t1 - t0, t2 - t1, value, norm

    dev.reset_peak()
    for _ in range(args.warmup):
        step()
    fwd, bwd, loss, norm = [], [], float("nan"), float("nan")
    for _ in range(args.steps):
        f, b_, loss, norm = step()
        fwd.append(f)
        bwd.append(b_)
    peak_gpu = dev.peak_mib()
    steps = [f + b_ for f, b_ in zip(fwd, bwd)]
    median = statistics.median(steps)
    report = {
        "implementation": f"PyTorch {torch.__version__} + transformers {transformers.__version__}"
                          + (f" + bitsandbytes {__import__('bitsandbytes').__version__}" if args.quantize else ""),
        "settings": {
            "shape": args.shape, "batch": batch, "len": length, "method": args.method,
            "l": args.l, "s": args.s, "r": args.r, "num_experts": args.num_experts,
            "steps": args.steps, "warmup": args.warmup, "seed": args.seed, "dtype": args.dtype,
            "quantize": args.quantize,
        },
        "attn_implementation": attn_impl,
        "prompt_rows": prompt_rows,
        "encoder_len": prompt_rows + length,
        "target_tokens": n_tokens,
        "frozen_params": frozen,
        "trainable_params": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
        "allocator": dev.allocator(),
        "step_s": steps,
        "median_s": median,
        "min_s": min(steps),
        "mean_s": statistics.fmean(steps),
        "forward_median_s": statistics.median(fwd),
        "backward_median_s": statistics.median(bwd),
        "tokens_per_s": batch * length / median,
        "start_rss_mib": start_rss,
        "import_rss_mib": import_rss,
        "setup_peak_rss_mib": setup_peak,
        "peak_rss_mib": maxrss_mib(),
        "loss": loss,
        "grad_norm": norm,
        "device": dev.name,
        "peak_gpu_mib": peak_gpu,
    }
    if args.json:
        print(json.dumps(report))
    else:
        r = report
        print(f"implementation         {r['implementation']} (attention: {attn_impl})")
        print(f"shape / method         {args.shape} / {args.method}")
        print(f"device / precision     {dev.name} / {args.dtype}")
        print(f"batch × len            {batch} × {length} (+{prompt_rows} prompt rows; {n_tokens} target tokens)")
        print(f"parameters             {frozen} frozen, {r['trainable_params']} trainable")
        print(f"threads                {r['threads']}")
        print(f"steps                  {args.steps} measured after {args.warmup} warm-up")
        print(f"step time              median {median:.3f} s, min {r['min_s']:.3f} s, mean {r['mean_s']:.3f} s")
        print(f"  forward / backward   {r['forward_median_s']:.3f} s / {r['backward_median_s']:.3f} s (medians)")
        print(f"tokens/s               {r['tokens_per_s']:.1f} (input tokens)")
        print(f"peak RSS (ru_maxrss)   {r['peak_rss_mib']:.0f} MiB (process peak; {setup_peak:.0f} MiB after set-up, {import_rss:.0f} MiB after imports, {start_rss:.0f} MiB at start)")
        if peak_gpu is None:
            print("peak GPU memory        n/a (cpu)")
        else:
            print(f"peak GPU memory        {peak_gpu:.0f} MiB (torch.cuda.max_memory_allocated over warm-up and steps; weights included)")
        print(f"last step              loss {loss:.4f}, gradient norm {norm:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
