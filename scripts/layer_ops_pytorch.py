"""PyTorch's side of `cargo bench --bench layer_ops`: each part of a
T5-small-shaped encoder layer timed forward + backward (gradient to its
inputs) at 16 x 228 positions, then a whole block and the six-layer encoder
of transformers' T5 (random weights, frozen, dropout off).

    python3 scripts/layer_ops_pytorch.py [--threads 2]

Prints milliseconds (median of 11), the same rows as the Rust bench; no
assertions. Needs torch and transformers (never CI).
"""

import argparse
import time

import torch
import torch.nn.functional as F


def median_ms(f):
    f()
    times = []
    for _ in range(11):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[5]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, t, d, h, ff = 16, 228, 512, 8, 2048
    dk = d // h
    x = torch.randn(b, t, d)
    up = torch.randn(b, t, ff)
    w_dd, w_up, w_down = torch.randn(d, d), torch.randn(ff, d), torch.randn(d, ff)
    norm_w = torch.ones(d)
    bias = torch.randn(1, h, t, t)

    def time_it(what, f):
        ms = median_ms(lambda: f().backward())
        print(f"{what:44} {ms:8.2f} ms")

    def leaf(tensor):
        return tensor.detach().requires_grad_()

    def rms_norm(v):
        var = v.pow(2).mean(-1, keepdim=True)
        return norm_w * (v * torch.rsqrt(var + 1e-6))

    time_it("rms_norm, PyTorch (T5LayerNorm's ops)", lambda: rms_norm(leaf(x)).sum())
    for inp, w, shape in [(x, w_dd, "512->512"), (x, w_up, "512->2048"), (up, w_down, "2048->512")]:
        time_it(f"dense {shape}, PyTorch", lambda: F.linear(leaf(inp), w).sum())

    def split(v):
        return v.view(b, t, h, dk).transpose(1, 2)

    def merge(v):
        return v.transpose(1, 2).reshape(b, t, d)

    def sdpa():
        q, k, v = leaf(x), leaf(x), leaf(x)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias, scale=1.0)
        return merge(out).sum()

    def eager():
        q, k, v = leaf(x), leaf(x), leaf(x)
        scores = torch.matmul(split(q), split(k).transpose(2, 3)) + bias
        return merge(torch.matmul(torch.softmax(scores.float(), -1), split(v))).sum()

    time_it("attention, PyTorch sdpa", sdpa)
    time_it("attention, PyTorch eager (T5's ops)", eager)
    q_dec = torch.randn(b, 4, d)
    mask_bias = torch.zeros(b, 1, 1, t)

    def cross():
        # The decoder's cross-attention as transformers computes it: the
        # encoder output projected to keys and values, then attention.
        q, enc = leaf(q_dec), leaf(x)
        k, v = F.linear(enc, w_dd), F.linear(enc, w_dd)
        qs = q.view(b, 4, h, dk).transpose(1, 2)
        out = F.scaled_dot_product_attention(qs, split(k), split(v), attn_mask=mask_bias, scale=1.0)
        return out.transpose(1, 2).reshape(b, 4, d).sum()

    time_it("cross-attention 4 x 228, PyTorch sdpa", cross)
    time_it("relu [b,t,2048], PyTorch", lambda: torch.relu(leaf(up) * 1.0).sum())
    time_it("residual add, PyTorch", lambda: (leaf(x) + leaf(x) * 1.0).sum())

    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=32128, d_model=d, d_kv=dk, d_ff=ff, num_layers=6, num_heads=h,
                   feed_forward_proj="relu", dropout_rate=0.0)
    model = T5EncoderModel._from_config(cfg, attn_implementation="sdpa").eval()
    for param in model.parameters():
        param.requires_grad_(False)
    mask = torch.ones(b, t, dtype=torch.long)
    block = model.encoder.block[0]

    def one_block():
        # No padding: block 0 computes its position bias itself, no mask needed.
        return block(leaf(x))[0].sum()

    time_it("encoder block, PyTorch sdpa", one_block)
    time_it("encoder, 6 blocks, PyTorch sdpa",
            lambda: model(inputs_embeds=leaf(x), attention_mask=mask).last_hidden_state.sum())


if __name__ == "__main__":
    main()
