#!/usr/bin/env python3
"""Write a random checkpoint folder of a large model's shape, for memory measurements.

    python scripts/make_big_checkpoint.py --shape t5-3b --dtype bf16 --out /tmp/t5-3b-bf16

Writes config.json and the weights as transformers names them, in `--shards` safetensors
files with model.safetensors.index.json (one file when 1), N(0, 0.05²) values in the
dtype. Tensors are made and written shard by shard, so this script itself never holds
more than one shard. No tokenizer: `ept quantize` and `ept inspect` do not need one.
Used by docs/BENCHMARKS.md ("4-bit weights") to show `ept quantize` streaming a T5-3B.
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPES = {
    # layers, d_model, heads, d_ff, d_kv
    "t5-3b": (24, 1024, 32, 16384, 128),
    "t5-11b": (24, 1024, 128, 65536, 128),
    "t5-base": (12, 768, 12, 3072, 64),
}


def t5_tensors(layers, d, heads, d_ff, d_kv, vocab=32128):
    inner = heads * d_kv
    yield "shared.weight", (vocab, d)
    for stack in ("encoder", "decoder"):
        for i in range(layers):
            p = f"{stack}.block.{i}.layer"
            attn = ["0.SelfAttention"] + (["1.EncDecAttention"] if stack == "decoder" else [])
            for j, a in enumerate(attn):
                yield f"{p}.{j}.layer_norm.weight", (d,)
                for w, shape in (("q", (inner, d)), ("k", (inner, d)), ("v", (inner, d)), ("o", (d, inner))):
                    yield f"{p}.{a}.{w}.weight", shape
                if i == 0 and a.endswith("SelfAttention"):
                    yield f"{p}.{a}.relative_attention_bias.weight", (32, heads)
            f = len(attn)
            yield f"{p}.{f}.layer_norm.weight", (d,)
            yield f"{p}.{f}.DenseReluDense.wi.weight", (d_ff, d)
            yield f"{p}.{f}.DenseReluDense.wo.weight", (d, d_ff)
        yield f"{stack}.final_layer_norm.weight", (d,)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="t5-3b", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    layers, d, heads, d_ff, d_kv = SHAPES[a.shape]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    a.out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": d, "d_kv": d_kv,
        "d_ff": d_ff, "num_layers": layers, "num_decoder_layers": layers, "num_heads": heads,
        "vocab_size": 32128, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "tie_word_embeddings": True,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "dropout_rate": 0.1,
        "is_encoder_decoder": True, "torch_dtype": "bfloat16" if a.dtype == "bf16" else "float32",
    }
    (a.out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    specs = list(t5_tensors(layers, d, heads, d_ff, d_kv))
    total = sum(torch.Size(s).numel() for _, s in specs)
    per_shard = total / a.shards
    gen = torch.Generator().manual_seed(a.seed)
    weight_map, shard, shard_n, index = {}, {}, 0, 1
    names = [f"model-{i:05d}-of-{a.shards:05d}.safetensors" for i in range(1, a.shards + 1)]

    def flush():
        nonlocal shard, shard_n, index
        name = names[index - 1] if a.shards > 1 else "model.safetensors"
        save_file(shard, str(a.out / name), metadata={"format": "pt"})
        for k in shard:
            weight_map[k] = name
        shard, shard_n, index = {}, 0, index + 1

    for name, shape in specs:
        if name.endswith("layer_norm.weight"):
            t = torch.ones(shape, dtype=dtype)
        else:
            t = (torch.randn(shape, generator=gen) * 0.05).to(dtype)
        shard[name] = t
        shard_n += t.numel()
        if shard_n >= per_shard and index < a.shards:
            flush()
    flush()
    if a.shards > 1:
        size = sum((a.out / n).stat().st_size for n in names)
        (a.out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    print(f"{a.out}: {total} parameters in {a.dtype}, {a.shards} file(s)")


if __name__ == "__main__":
    main()
