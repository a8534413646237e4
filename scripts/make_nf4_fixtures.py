#!/usr/bin/env python3
"""Generate the 4-bit (bitsandbytes NF4 / FP4, QLoRA double quantization) reference fixtures.

Usage (from the repository root):

    python scripts/make_nf4_fixtures.py --out tests/fixtures/nf4

Made with torch 2.15.0 (CPU), transformers 5.25.0, bitsandbytes 0.50.2 (the PyPI wheel, whose
libbitsandbytes_cpu.so runs 4-bit quantization without a GPU), safetensors 0.8.0, numpy 2.4.6
(versions recorded in every reference.json and in manifest.json). CPU only, single-threaded,
seeded; reruns on the same machine and library versions write identical bytes. Machine-dependent:
manifest.json's `cpu_kernel_checks` (AVX-512 or not) and, in the last digits, the `bnb_bf16` losses
(bf16 matmuls in torch's CPU kernels); everything else is exact arithmetic re-derived below. Writes

    <out>/manifest.json          versions, the bitsandbytes CPU arithmetic (notes), cross-checks
    <out>/codes.json             the 4-bit codebooks (nf4, fp4), the signed dynamic 8-bit map and
                                 the nested_quant_map as found in a saved file, as floats and u32 bits
    <out>/blocks.safetensors     direct quantize_4bit / dequantize_4bit cases (see blocks.json)
    <out>/blocks.json
    <out>/<model>/               a transformers save_pretrained of a 4-bit model loaded from an
                                 existing fixture checkpoint with BitsAndBytesConfig:
        config.json, generation_config.json, model.safetensors (as transformers + bitsandbytes write
        it), tokenizer files (copied from the source), decoded.safetensors (every quantized Linear
        weight decoded), reference.json (losses of the decoded weights in f32, and of bitsandbytes'
        own 4-bit forward with bf16 compute)

Models: relu-bf16 (tests/fixtures/t5/relu-bf16, T5 relu, bf16, tied), gated-untied (T5 gated-gelu,
f32), llama-gqa (Llama, f32, GQA), qwen2-bias (Qwen2 with q/k/v biases, f32), all NF4 + double
quantization, compute dtype bf16, loaded in the source's own dtype; llama-gqa-fp4 (FP4, no double
quantization).

Important (see NF4.md): on a CPU with AVX512-BF16 an eval-mode forward of a 4-bit bitsandbytes
model repacks its weights; save_pretrained is therefore called before any forward, and the
4-bit forward (reference `bnb_bf16`) runs on a fresh load from the saved folder in train mode
(dropout 0 through the config) under torch.no_grad().

bitsandbytes 0.50.2's CPU dequantize_4bit kernel (csrc/cpu_ops.cpp, AVX-512 branch) indexes the
absmax of row r, column c as absmax[r * (cols / blocksize) + c / blocksize] (integer division), which
is wrong whenever the row length is a multiple of 16 but not of the blocksize (e.g. rows of 32, 48,
96 with blocksize 64): the flat-index formula absmax[(r * cols + c) / blocksize] is what the format
means (bitsandbytes' own torch kernel, its CUDA kernels, its scalar C++ path, NF4.md). Every dequant
in these fixtures is therefore bitsandbytes' torch ("default" backend) dequantize_4bit, which this
script registers as the CPU kernel of torch.ops.bitsandbytes.dequantize_4bit (also for the 4-bit
model forward); manifest.json lists where the AVX-512 kernel disagrees on this machine.

Every packed weight, absmax and nested state in these fixtures (blocks and all model weights) is
also re-derived by an independent numpy re-implementation of bitsandbytes' CPU arithmetic
(`Ref` below; asserted bitwise equal), so the fixtures document the exact algorithm:
  quantize_4bit   (bitsandbytes/backends/default/ops.py, torch ops, for f32 / bf16 / f16 input):
                  x = A.float(); full blocks: absmax = max|x|, scaled = clamp(x * (1 / max(absmax,
                  1e-38)), -1, 1) (f32 reciprocal then f32 multiply); a short last block: am =
                  max(max|x|, 1e-38) (this clamped value is what is stored), scaled = clamp(x / am,
                  -1, 1) (a true f32 division); odd n: one 0.0 appended; index = number of
                  midpoints strictly below the scaled value (torch.bucketize, right=False: a tie goes
                  to the lower index), midpoints = (c[i] + c[i+1]) / 2 in f32 over the code sorted
                  ascending, mapped back through argsort for fp4; byte = q[2i] << 4 | q[2i+1].
  double quant    offset = torch's f32 mean of absmax (cascade sum, see `torch_sum_f32`, then / n);
                  quantize_blockwise(absmax - offset, create_dynamic_map(signed=True), 256) on the CPU
                  = the C kernel with a 65536-entry look-up table (see `Ref.lut_quantize`), NOT the
                  exact nearest code.
  dequant         a = f32(f32(dyn[qa] * nested_absmax[i // 256]) + offset); w = f32(code[q] * a[j //
                  blocksize]) rounded to the stored dtype (round to nearest even).

Requirements: torch, transformers (>= 5), bitsandbytes (>= 0.49, CPU wheel), safetensors, numpy.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import ctypes as ct
import json
import logging
import re
import shutil
import struct
import sys
import warnings
from collections import OrderedDict
from math import prod
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

import bitsandbytes
import bitsandbytes.functional as BF
import safetensors
import transformers
from bitsandbytes.backends.default import ops as bnb_default_ops
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute as _dq4_maybe_compiled
from bitsandbytes.backends.utils import _get_4bit_code
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, BitsAndBytesConfig

# bitsandbytes wraps its torch dequantize in torch.compile (falling back to eager); use the eager function
_dequantize_4bit_compute = getattr(_dq4_maybe_compiled, "__wrapped__", _dq4_maybe_compiled)

transformers.utils.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

torch.set_num_threads(1)  # torch's f32 mean (the double-quant offset) is thread-dependent above 32768 values
torch.use_deterministic_algorithms(True)

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures"
BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256
F32_ONLY = ("large", "lutgrid")  # block inputs stored (and used) in f32 only, to keep blocks.safetensors small

MODELS = [
    # name, source (relative to the repo), family, load dtype, quant_type, double quant
    dict(name="relu-bf16", src="tests/fixtures/t5/relu-bf16", family="t5", dtype=torch.bfloat16, qt="nf4", dq=True),
    dict(name="gated-untied", src="tests/fixtures/t5/gated-untied", family="t5", dtype=torch.float32, qt="nf4", dq=True),
    dict(name="llama-gqa", src="tests/fixtures/llama/llama-gqa", family="causal", dtype=torch.float32, qt="nf4", dq=True),
    dict(name="qwen2-bias", src="tests/fixtures/llama/qwen2-bias", family="causal", dtype=torch.float32, qt="nf4", dq=True),
    dict(name="llama-gqa-fp4", src="tests/fixtures/llama/llama-gqa", family="causal", dtype=torch.float32, qt="fp4",
         dq=False),
]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

f32 = np.float32


# --------------------------------------------------------------------------------------
# json / safetensors helpers (deterministic)
# --------------------------------------------------------------------------------------


def fl(x) -> float:
    """An f32 value as the python float that holds it exactly (repr round-trips the f32)."""
    return float(np.float32(x))


def bits(x) -> int:
    return struct.unpack("<I", struct.pack("<f", float(np.float32(x))))[0]


def fl_list(a) -> list[float]:
    return [fl(v) for v in np.asarray(a, dtype=f32).reshape(-1)]


def bits_list(a) -> list[int]:
    return [int(v) for v in np.asarray(a, dtype=f32).reshape(-1).view(np.uint32)]


_NUM_ARRAY = re.compile(r"\[\s*(-?[0-9][-0-9.eE+]*(?:,\s*-?[0-9][-0-9.eE+]*)*)\s*\]")


def dump_json(path: Path, obj, indent=1) -> None:
    """sorted keys, indent 1, arrays of numbers on one line."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False, sort_keys=True)
    text = _NUM_ARRAY.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


_ST_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.uint8: "U8"}


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.float32:
        return t.numpy().astype("<f4").tobytes()
    if t.dtype == torch.uint8:
        return t.numpy().tobytes()
    raise TypeError(t.dtype)


def save_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """Sorted names, sorted metadata keys, dtypes kept (F32 / BF16 / F16 / U8): byte-stable."""
    header: "OrderedDict[str, object]" = OrderedDict()
    if metadata:
        header["__metadata__"] = OrderedDict((k, str(metadata[k])) for k in sorted(metadata))
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        raw = tensor_bytes(t)
        header[name] = OrderedDict(
            [("dtype", _ST_DTYPE[t.dtype]), ("shape", list(t.shape)), ("data_offsets", [offset, offset + len(raw)])]
        )
        blobs.append(raw)
        offset += len(raw)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)
    path.chmod(0o644)


def read_safetensors(path: Path) -> "OrderedDict[str, torch.Tensor]":
    out = OrderedDict()
    with safe_open(str(path), "pt") as f:
        for k in sorted(f.keys()):
            out[k] = f.get_tensor(k)
    return out


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in (torch.bfloat16, torch.float16):
        return torch.equal(a.view(torch.int16), b.view(torch.int16))
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    return torch.equal(a, b)


# --------------------------------------------------------------------------------------
# independent re-implementation of bitsandbytes' CPU arithmetic (numpy, f32)
# --------------------------------------------------------------------------------------


def _ceil_log2(x: int) -> int:
    return 1 if x <= 2 else int(x - 1).bit_length()


def _multi_row_sum(load, nrows: int, size: int, zero):
    """aten/src/ATen/native/cpu/SumKernel.cpp multi_row_sum: 4 levels of partial sums, 2**level_power apart."""
    num_levels = 4
    level_power = max(4, _ceil_log2(size) // num_levels)
    level_step = 1 << level_power
    level_mask = level_step - 1
    acc = [[zero() for _ in range(nrows)] for _ in range(num_levels)]
    i = 0
    while i + level_step <= size:
        for _ in range(level_step):
            for k in range(nrows):
                acc[0][k] = acc[0][k] + load(i, k)
            i += 1
        for j in range(1, num_levels):
            for k in range(nrows):
                acc[j][k] = acc[j][k] + acc[j - 1][k]
                acc[j - 1][k] = zero()
            if (i & (level_mask << (j * level_power))) != 0:
                break
    while i < size:
        for k in range(nrows):
            acc[0][k] = acc[0][k] + load(i, k)
        i += 1
    for j in range(1, num_levels):
        for k in range(nrows):
            acc[0][k] = acc[0][k] + acc[j][k]
    return acc[0]


def _row_sum(load, size: int, zero):
    """SumKernel.cpp row_sum: 4 interleaved partial sums (ilp), the tail into the first, then combined."""
    ilp = 4
    size_ilp = size // ilp
    ps = _multi_row_sum(lambda i, k: load(i * ilp + k), ilp, size_ilp, zero)
    for i in range(size_ilp * ilp, size):
        ps[0] = ps[0] + load(i)
    for k in range(1, ilp):
        ps[0] = ps[0] + ps[k]
    return ps[0]


def torch_sum_f32(a, lanes: int = 8) -> np.float32:
    """torch.sum of a contiguous 1-D f32 tensor on the CPU, single-threaded (cascade_sum ->
    vectorized_inner_sum with Vectorized<float> of 8 lanes, which is what this torch build uses for
    the sum kernel even on an AVX-512 machine; n < 8: scalar_inner_sum)."""
    a = np.asarray(a, dtype=f32).reshape(-1)
    n = a.size
    if n >= lanes:
        nv = n // lanes
        vec = _row_sum(lambda i: a[i * lanes:(i + 1) * lanes], nv, lambda: np.zeros(lanes, f32))
        acc = f32(0)
        for k in range(nv * lanes, n):  # scalar tail first ...
            acc = f32(acc + a[k])
        for k in range(lanes):  # ... then the lanes in order
            acc = f32(acc + vec[k])
    else:
        acc = _row_sum(lambda i: a[i], n, lambda: f32(0))
    return f32(f32(0) + acc)


def torch_mean_f32(a) -> np.float32:
    return f32(torch_sum_f32(a) / f32(np.asarray(a).size))


class Ref:
    """bitsandbytes 0.50.2 on the CPU, re-implemented."""

    @staticmethod
    def sorted_bounds(code):
        code = np.asarray(code, f32)
        order = np.argsort(code, kind="stable")  # torch.argsort gives the same order for these codes (+0 before +0)
        sc = code[order]
        bounds = ((sc[:-1] + sc[1:]).astype(f32) / f32(2)).astype(f32)
        return bounds, order

    @staticmethod
    def quantize_4bit(x, blocksize: int, code):
        """-> packed uint8 [ceil(n/2)], absmax f32 [ceil(n/blocksize)] (backends/default/ops.py quantize_4bit)."""
        bounds, order = Ref.sorted_bounds(code)
        a = np.asarray(x, f32).reshape(-1)
        n = a.size
        rem = n % blocksize
        full = n - rem
        nb = full // blocksize
        blk = a[:full].reshape(nb, blocksize)
        absmax = np.abs(blk).max(axis=1).astype(f32) if nb else np.zeros(0, f32)
        inv = (f32(1) / np.maximum(absmax, f32(1e-38))).astype(f32)
        scaled = np.clip((blk * inv[:, None]).astype(f32), f32(-1), f32(1)).reshape(-1).astype(f32)
        if rem:
            am = f32(max(f32(np.abs(a[full:]).max()), f32(1e-38)))
            absmax = np.concatenate([absmax, np.array([am], f32)])
            scaled = np.concatenate([scaled, np.clip((a[full:] / am).astype(f32), f32(-1), f32(1))]).astype(f32)
        if scaled.size % 2:
            scaled = np.concatenate([scaled, np.zeros(1, f32)])
        q = order[np.searchsorted(bounds, scaled, side="left")].astype(np.uint8)  # #bounds strictly below
        return ((q[0::2] << 4) | q[1::2]).astype(np.uint8), absmax

    @staticmethod
    def lut(code) -> np.ndarray:
        """csrc/cpu_ops.cpp build_quantize_lut: 65536 grid points val_i = f32(f32(2i) / 65535) - 1, each mapped
        to the number of midpoints 0.5 * (c[k] + c[k+1]) strictly below it."""
        code = np.asarray(code, f32)
        mid = (f32(0.5) * (code[:-1] + code[1:]).astype(f32)).astype(f32)
        i = np.arange(65536).astype(f32)
        val = ((((i + i).astype(f32)) / f32(65535)).astype(f32) - f32(1)).astype(f32)
        return np.searchsorted(mid, val, side="left").astype(np.uint8)

    @staticmethod
    def lut_quantize(x, code, blocksize: int):
        """csrc/cpu_ops.cpp quantize_cpu_impl (the CPU quantize_blockwise kernel)."""
        x = np.asarray(x, f32).reshape(-1)
        lut = Ref.lut(code)
        n = x.size
        nb = -(-n // blocksize)
        out = np.zeros(n, np.uint8)
        absmax = np.zeros(nb, f32)
        for b in range(nb):
            blk = x[b * blocksize:(b + 1) * blocksize]
            am = f32(np.abs(blk).max())
            absmax[b] = am
            if am == 0:
                continue  # all codes 0 (the most negative entry, times 0)
            inv = f32(f32(1) / am)
            v = np.clip((blk * inv).astype(f32), f32(-1), f32(1)).astype(f32)
            t = ((v + f32(1)).astype(f32) * f32(0.5)).astype(f32)
            # fma(t, 65535, 0.5) with one rounding to f32 (vfmadd213ss), truncated to int, low 16 bits
            y = (t.astype(np.float64) * 65535.0 + 0.5).astype(f32)
            idx = np.trunc(y).astype(np.int64) & 0xFFFF
            out[b * blocksize:(b + 1) * blocksize] = lut[idx]
        return out, absmax

    @staticmethod
    def double_quant(absmax, dyn):
        offset = torch_mean_f32(absmax)
        q, nested = Ref.lut_quantize((np.asarray(absmax, f32) - offset).astype(f32), dyn, NESTED_BLOCKSIZE)
        return q, nested, offset

    @staticmethod
    def absmax_decode(qa, nested_absmax, offset, dyn):
        qa = np.asarray(qa, np.uint8).reshape(-1)
        s = np.repeat(np.asarray(nested_absmax, f32), NESTED_BLOCKSIZE)[: qa.size]
        return ((np.asarray(dyn, f32)[qa] * s).astype(f32) + f32(offset)).astype(f32)

    @staticmethod
    def dequant_4bit(packed, absmax, code, n: int, blocksize: int) -> np.ndarray:
        p = np.asarray(packed, np.uint8).reshape(-1)
        q = np.stack([p >> 4, p & 15], 1).reshape(-1)[:n]
        a = np.repeat(np.asarray(absmax, f32), blocksize)[:n]
        return (np.asarray(code, f32)[q] * a).astype(f32)


def to_dtype(a: np.ndarray, dt: torch.dtype, shape) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=f32)).reshape(shape).to(dt)


# --------------------------------------------------------------------------------------
# bitsandbytes' CPU dequantize_4bit: the C kernel (diagnostics) and the torch kernel (used)
# --------------------------------------------------------------------------------------

_HAS_AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"


def bnb_c_dequantize_4bit(A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape,
                          dtype: torch.dtype) -> torch.Tensor:
    """What bitsandbytes/backends/cpu/ops.py's dequantize_4bit kernel computes (libbitsandbytes_cpu)."""
    from bitsandbytes.cextension import lib
    from bitsandbytes.functional import get_ptr

    if (_HAS_AVX512 and blocksize >= 2048) or shape[-1] % 2 != 0:
        return _dequantize_4bit_compute(A.view(torch.uint8).reshape(-1), absmax, _get_4bit_code(quant_type, A.device),
                                        blocksize, shape, dtype)
    A = A.view(torch.uint8)
    absmax = absmax.float()
    shp = (1, shape[0]) if len(shape) == 1 else tuple(shape)
    m, n = prod(shp[:-1]), shp[-1]
    A = A.reshape(m, n // 2).contiguous()
    out = torch.empty(tuple(shape), dtype=dtype)
    suffix = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    fn = getattr(lib, f"cdequantize_blockwise_cpu_{quant_type}_{suffix}")
    fn(get_ptr(A), get_ptr(absmax), get_ptr(out), ct.c_longlong(blocksize), ct.c_longlong(m), ct.c_longlong(n))
    return out


def _torch_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    if A.dtype != torch.uint8:
        A = A.view(torch.uint8)
    code = _get_4bit_code(quant_type, A.device)
    return _dequantize_4bit_compute(A.reshape(-1), absmax, code, blocksize, shape, dtype)


def use_torch_dequantize_kernel_on_cpu() -> None:
    """Make bitsandbytes' own torch implementation the CPU kernel of dequantize_4bit (see the docstring)."""
    torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", _torch_dequantize_4bit)


# --------------------------------------------------------------------------------------
# 1. codebooks
# --------------------------------------------------------------------------------------


def codebooks() -> dict:
    nf4 = BF.get_4bit_type("nf4", device="cpu")
    fp4 = BF.get_4bit_type("fp4", device="cpu")
    dyn = BF.create_dynamic_map(signed=True)
    assert torch.equal(nf4, _get_4bit_code("nf4", torch.device("cpu")))
    return {"nf4": nf4.numpy().astype(f32), "fp4": fp4.numpy().astype(f32), "dynamic_signed": dyn.numpy().astype(f32)}


# --------------------------------------------------------------------------------------
# 2. direct quantize_4bit / dequantize_4bit cases
# --------------------------------------------------------------------------------------


def find_div_vs_recip(codes: dict, gen: np.random.Generator):
    """An absmax `a` and values x_nf4, x_fp4 for which clamp(x * f32(1/a)) (full block) and x / a (short last
    block) fall into different buckets of the nf4 / fp4 midpoints."""
    bnf, _ = Ref.sorted_bounds(codes["nf4"])
    bfp, _ = Ref.sorted_bounds(codes["fp4"])
    for _ in range(100000):
        a = f32(gen.uniform(0.01, 1.0))
        inv = f32(f32(1) / a)
        found = {}
        for qt, bounds in (("nf4", bnf), ("fp4", bfp)):
            for b in bounds:
                if b == 0:
                    continue
                x0 = f32(b * a)
                cands, lo, hi = [x0], x0, x0
                for _ in range(8):
                    lo = f32(np.nextafter(lo, f32(-np.inf), dtype=f32))
                    hi = f32(np.nextafter(hi, f32(np.inf), dtype=f32))
                    cands += [lo, hi]
                for x in cands:
                    s_mul = f32(x * inv)
                    s_div = f32(x / a)
                    k_mul = int(np.searchsorted(bounds, np.array([s_mul], f32), side="left")[0])
                    k_div = int(np.searchsorted(bounds, np.array([s_div], f32), side="left")[0])
                    if k_mul != k_div and abs(x) < a:
                        found[qt] = x
                        break
                if qt in found:
                    break
        if len(found) == 2:
            return a, found["nf4"], found["fp4"]
    raise SystemExit("no division-vs-reciprocal example found")


def make_inputs(codes: dict) -> "OrderedDict[str, tuple[np.ndarray, str]]":
    """name -> (f32 values, description). Each is used as f32 and rounded to bf16."""
    g = torch.Generator().manual_seed(20260501)
    gen = np.random.default_rng(20260501)

    def randn(*shape, scale=0.05):
        return (torch.randn(*shape, generator=g) * scale).numpy().astype(f32)

    ins = OrderedDict()
    ins["s24x32"] = (randn(24, 32), "rows of 32 (shorter than a block: blocks span two rows)")
    ins["s33x17"] = (randn(33, 17), "561 values (odd: pad nibble), odd row length, short last block of 49")
    ins["s7x64"] = (randn(7, 64), "one block per row")
    s6 = randn(6, 40)
    s6[0, 5], s6[0, 6], s6[2, 7] = 1e-5, -1e-5, 0.0  # fp4: a tiny positive takes index 8, a tiny negative index 0
    ins["s6x40"] = (s6, "rows of 40: even, not a multiple of 16 (bitsandbytes' scalar C dequantize path); "
                        "+1e-5, -1e-5 and 0.0 at flat indices 5, 6, 87")

    z = randn(5, 40)
    zf = z.reshape(-1)
    zf[64:128] = 0.0  # a whole 64-block of zeros
    zf[192:] = 0.0  # the short last block (8 values) all zero: stored absmax is the clamp 1e-38
    ins["zeros"] = (z, "block 1 all zero (absmax 0, codes = index of 0.0); short last block all zero "
                       "(absmax stored as f32(1e-38), a subnormal)")

    # ties: values exactly on the midpoints between codes after scaling (absmax a power of two: exact)
    rows = []
    for qt, scale in (("nf4", 1.0), ("nf4", 2.0), ("fp4", 1.0), ("fp4", 0.25)):
        bounds, _ = Ref.sorted_bounds(codes[qt])
        vals = [1.0, -1.0] + list(bounds) + list(codes[qt]) + list(-bounds)
        vals = (vals * 3)[:64]
        rows.append(np.asarray(vals, f32) * f32(scale))
    ins["ties"] = (np.stack(rows).astype(f32), "rows 0-1: nf4 midpoints (absmax 1 and 2), rows 2-3: fp4 "
                   "midpoints (absmax 1 and 0.25), also +-absmax, the codes, -midpoints; f32 exact, "
                   "bf16 rounds them")

    ext = np.zeros((3, 64), f32)
    for r, a in enumerate((0.0371, 1.7, 3.0e-3)):
        a = f32(a)
        ext[r] = (gen.uniform(-0.9, 0.9, size=64) * a).astype(f32)
        ext[r, r] = a
        ext[r, 10 + r] = -a
        ext[r, 20] = np.nextafter(a, f32(0), dtype=f32)
        ext[r, 21] = -np.nextafter(a, f32(0), dtype=f32)
        ext[r, 22] = a * f32(0.5)
    ins["extremes"] = (ext.astype(f32), "each block holds +absmax and -absmax exactly (absmax not a power of 2) "
                       "and +-(absmax - 1 ulp)")

    a, x_nf4, x_fp4 = find_div_vs_recip(codes, gen)
    dv = (gen.uniform(-0.5, 0.5, size=100) * a).astype(f32)
    for base in (0, 64):  # the full block and the short last block (36 values)
        dv[base + 0] = a
        dv[base + 1] = x_nf4
        dv[base + 2] = x_fp4
        dv[base + 3] = -a
    ins["divrecip"] = (dv.reshape(1, 100), "[1,100]: the same values in the full block and in the short last block, "
                       "where x * f32(1/absmax) and x / absmax land in different buckets (nf4 at index 1, "
                       "fp4 at index 2)")

    # absmax values all within a few 1e-5 (relative) of their mean except two: after double quantization the
    # values (absmax - offset) / nested_absmax lie near 0, where the dynamic map is denser than the C kernel's
    # 65536-step look-up grid: the stored codes differ from the nearest code there
    m, dd = f32(0.5), f32(0.4)
    lg = (gen.uniform(-0.5, 0.5, size=(32, 64)) * 0.1).astype(f32)  # |fill| < 0.05 < every absmax
    tiny = (gen.uniform(-5e-5, 5e-5, size=32) * 0.4).astype(f32)
    tiny[0], tiny[1] = dd, -dd
    for r in range(32):
        lg[r, (7 * r) % 64] = f32(m + tiny[r])
    ins["lutgrid"] = (lg, "[32,64]: block absmaxes 0.5 +- 0.4 and 0.5 + u, |u| < 2e-5: the nested codes come from "
                      "the 65536-entry look-up table and differ from the nearest dynamic-map codes (f32 only)")

    big = (torch.randn(257, 65, generator=g) * 0.02 * torch.exp(torch.randn(257, 1, generator=g) * 0.5)).numpy()
    ins["large"] = (big.astype(f32), "[257,65] = 16705 values: 262 absmax blocks (last has 1 value), "
                    "2 nested blocks (256 + 6), odd count (f32 only)")
    return ins


def block_cases(ins) -> list[dict]:
    cases = []
    small = ["s24x32", "s33x17", "s7x64", "s6x40", "zeros", "ties", "extremes", "divrecip"]
    for name in small:
        for dt in ("float32", "bfloat16"):
            for qt in ("nf4", "fp4"):
                for cs in (True, False):
                    cases.append(dict(input=name, dtype=dt, quant_type=qt, compress_statistics=cs, blocksize=64))
    for name in ("s24x32", "s33x17"):
        cases.append(dict(input=name, dtype="float32", quant_type="nf4", compress_statistics=True, blocksize=128))
    cases.append(dict(input="large", dtype="float32", quant_type="nf4", compress_statistics=True, blocksize=64))
    for qt in ("nf4", "fp4"):
        cases.append(dict(input="lutgrid", dtype="float32", quant_type=qt, compress_statistics=True, blocksize=64))
    for i, c in enumerate(cases):
        c["name"] = f"c{i:02d}"
    return cases


def run_blocks(out: Path, codes: dict, diag: dict) -> dict:
    ins = make_inputs(codes)
    tensors = OrderedDict()
    inputs_meta = []
    for name, (vals, desc) in ins.items():
        for dt in ((torch.float32,) if name in F32_ONLY else (torch.float32, torch.bfloat16)):
            key = f"{name}.{dtype_name(dt)}"
            tensors[f"{key}.input"] = torch.from_numpy(vals.copy()).to(dt)
            inputs_meta.append(OrderedDict(name=key, tensor=f"{key}.input", dtype=dtype_name(dt),
                                           shape=list(vals.shape), description=desc))
    cases_meta = []
    cpu_kernel = []
    dyn = codes["dynamic_signed"]
    for c in block_cases(ins):
        dt = getattr(torch, c["dtype"])
        x = tensors[f"{c['input']}.{c['dtype']}.input"]
        shape = list(x.shape)
        n = x.numel()
        packed, st = BF.quantize_4bit(x, blocksize=c["blocksize"], compress_statistics=c["compress_statistics"],
                                      quant_type=c["quant_type"])
        raw_packed, raw_absmax = torch.ops.bitsandbytes.quantize_4bit.default(x, c["blocksize"], c["quant_type"],
                                                                            torch.uint8)
        assert torch.equal(raw_packed, packed)
        dq = BF.dequantize_4bit(packed, st)  # torch kernel (registered as the CPU kernel)
        assert dq.dtype == dt and list(dq.shape) == shape
        # independent re-derivation
        code = codes[c["quant_type"]]
        rp, ra = Ref.quantize_4bit(x.float().numpy(), c["blocksize"], code)
        assert np.array_equal(rp, packed.numpy().reshape(-1)), c
        assert np.array_equal(ra.view(np.uint32), raw_absmax.numpy().view(np.uint32)), c
        nm = c["name"]
        tensors[f"{nm}.packed"] = packed
        meta = OrderedDict(
            name=nm, input=f"{c['input']}.{c['dtype']}.input", input_dtype=c["dtype"], shape=shape, n=n,
            quant_type=c["quant_type"], blocksize=c["blocksize"], compress_statistics=c["compress_statistics"],
            n_blocks=int(raw_absmax.numel()), packed_shape=list(packed.shape),
        )
        qs = st.as_dict(packed=True)
        qs_json = json.loads(bytes(qs[f"quant_state.bitsandbytes__{c['quant_type']}"].tolist()).decode("utf-8"))
        meta["quant_state"] = qs_json
        if c["compress_statistics"]:
            tensors[f"{nm}.absmax_f32"] = raw_absmax
            q_ref, nested_ref, off_ref = Ref.double_quant(ra, dyn)
            assert np.array_equal(q_ref, st.absmax.numpy()), c
            assert np.array_equal(nested_ref.view(np.uint32), st.state2.absmax.numpy().view(np.uint32)), c
            assert bits(off_ref) == bits(st.offset.item()), c
            assert torch.equal(st.state2.code, torch.from_numpy(dyn))
            assert st.state2.blocksize == NESTED_BLOCKSIZE
            a_dec = Ref.absmax_decode(st.absmax.numpy(), st.state2.absmax.numpy(), off_ref, dyn)
            a_bnb = BF.dequantize_blockwise(st.absmax, st.state2) + st.offset
            assert np.array_equal(a_dec.view(np.uint32), a_bnb.numpy().view(np.uint32)), c
            tensors[f"{nm}.absmax"] = st.absmax  # U8
            tensors[f"{nm}.nested_absmax"] = st.state2.absmax
            tensors[f"{nm}.nested_quant_map"] = st.state2.code
            tensors[f"{nm}.absmax_decoded"] = torch.from_numpy(a_dec)
            meta["nested_offset"] = fl(off_ref)
            meta["nested_offset_bits"] = bits(off_ref)
            meta["n_nested_blocks"] = int(st.state2.absmax.numel())
            assert qs_json["nested_offset"] == fl(off_ref)
            absmax_used = a_dec
        else:
            assert st.state2 is None
            tensors[f"{nm}.absmax"] = st.absmax
            absmax_used = ra
        ref_dq = Ref.dequant_4bit(packed.numpy(), absmax_used, code, n, c["blocksize"])
        ref_dq_t = to_dtype(ref_dq, dt, shape)
        assert same_bits(dq, ref_dq_t), c
        tensors[f"{nm}.dequant"] = dq
        meta["tensors"] = sorted(k.split(".", 1)[1] for k in tensors if k.startswith(nm + "."))
        # diagnostics: the AVX-512 / scalar C kernel of this machine
        absmax_t = torch.from_numpy(absmax_used)
        ck = bnb_c_dequantize_4bit(packed, absmax_t, c["blocksize"], c["quant_type"], shape, dt)
        if not same_bits(ck, dq):
            numerically = bool(torch.equal(ck.float(), dq.float()))
            cpu_kernel.append(OrderedDict(case=nm, shape=shape, dtype=c["dtype"], quant_type=c["quant_type"],
                                          blocksize=c["blocksize"], values_equal_up_to_zero_sign=numerically,
                                          max_abs_diff=fl((ck.float() - dq.float()).abs().max())))
        cases_meta.append(meta)

    # the engineered division-vs-reciprocal values really take different buckets
    for qt, col in (("nf4", 1), ("fp4", 2)):
        case = next(m for m in cases_meta if m["input"] == "divrecip.float32.input" and m["quant_type"] == qt
                    and not m["compress_statistics"])
        p = tensors[f"{case['name']}.packed"].numpy().reshape(-1)
        q = np.stack([p >> 4, p & 15], 1).reshape(-1)
        assert q[col] != q[64 + col], (qt, q[col], q[64 + col])

    # lutgrid: the C kernel's look-up table gives other codes than the exact nearest
    dyn_t = codes["dynamic_signed"]
    for case in (m for m in cases_meta if m["input"] == "lutgrid.float32.input"):
        nm = case["name"]
        v = (tensors[f"{nm}.absmax_f32"].numpy() - f32(case["nested_offset"])).astype(f32)
        na = np.repeat(tensors[f"{nm}.nested_absmax"].numpy(), NESTED_BLOCKSIZE)[: v.size]
        sc = np.clip((v * (f32(1) / na).astype(f32)).astype(f32), f32(-1), f32(1))
        nearest = np.abs(sc[:, None].astype(np.float64) - dyn_t[None, :].astype(np.float64)).argmin(1)
        n_diff = int((nearest != tensors[f"{nm}.absmax"].numpy()).sum())
        assert n_diff > 0, nm
        case["nested_codes_not_nearest"] = n_diff

    save_safetensors(out / "blocks.safetensors", tensors)
    doc = OrderedDict(
        description=(
            "Direct bitsandbytes.functional.quantize_4bit / dequantize_4bit cases on the CPU. Per case: "
            "`input` names the input tensor (`<input>.input`, f32 or bf16, shared by several cases); tensors "
            "`<case>.packed` (U8 [ceil(n/2), 1], first value in the high nibble), `<case>.absmax_f32` (F32, the "
            "per-block absmax from the quantize kernel, before double quantization, only when compress_statistics; "
            "for a short last block it is max(max|x|, 1e-38)), `<case>.absmax` (U8 when compress_statistics, else "
            "F32: the quantize kernel's absmax), `<case>.nested_absmax` (F32, per 256 absmax), `<case>.nested_quant_map` (F32 [256]), "
            "`<case>.absmax_decoded` (F32, dyn[absmax] * nested_absmax[i/256] + nested_offset: the absmax "
            "dequantize_4bit uses), `<case>.dequant` (dequantize_4bit in the input dtype). `quant_state` is "
            "the JSON bitsandbytes stores as `quant_state.bitsandbytes__<type>` in a safetensors file; "
            "nested_offset is written as a float and as its f32 bits."
        ),
        dequant_kernel=(
            "bitsandbytes' torch kernel (backends/default/ops.py _dequantize_4bit_compute): w = f32(code[q] * "
            "absmax[j / blocksize]) rounded to the dtype; fp4 index 8 decodes to +0.0 (get_4bit_type). The "
            "CPU C kernel differs on some cases: manifest.json cpu_kernel_checks."
        ),
        versions=versions(),
        inputs=inputs_meta,
        cases=cases_meta,
    )
    dump_json(out / "blocks.json", doc)
    diag["blocks"] = cpu_kernel
    return doc


# --------------------------------------------------------------------------------------
# 3. 4-bit model folders
# --------------------------------------------------------------------------------------


def versions() -> dict:
    return OrderedDict(
        torch=torch.__version__.split("+")[0], transformers=transformers.__version__,
        bitsandbytes=bitsandbytes.__version__, safetensors=safetensors.__version__, numpy=np.__version__,
    )


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def example_losses(model, family: str, examples: list[dict]) -> list[float]:
    out = []
    for ex in examples:
        src, lab = ex["input_ids"], ex["label_ids"]
        if family == "t5":
            lg = model(input_ids=torch.tensor([src]), labels=torch.tensor([lab])).logits[0]
        else:
            seq = src + lab
            lg = model(input_ids=torch.tensor([seq])).logits[0, len(src) - 1: len(seq) - 1]
        assert lg.shape[0] == len(lab)
        out.append(float(token_nll(lg, torch.tensor(lab)).sum()))
    return out


def model_class(family: str):
    return AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM


def bnb_config(qt: str, dq: bool) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qt, bnb_4bit_use_double_quant=dq,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def split_saved(sd: dict) -> tuple[list[str], list[str]]:
    """quantized Linear weight names (those with a packed quant_state) and all other tensors."""
    quant = sorted(k[: -len(".quant_state.bitsandbytes__nf4")] for k in sd
                   if re.search(r"\.quant_state\.bitsandbytes__(nf4|fp4)$", k))
    parts = set()
    for q in quant:
        parts.update(k for k in sd if k == q or k.startswith(q + "."))
    other = sorted(k for k in sd if k not in parts)
    return quant, other


def check_table(sd: dict, name: str, spec: dict) -> dict:
    """The saved tensors of one quantized Linear are as NF4.md's table says; returns the parsed quant state."""
    qt = spec["qt"]
    qs = json.loads(bytes(sd[f"{name}.quant_state.bitsandbytes__{qt}"].tolist()).decode("utf-8"))
    shape = qs["shape"]
    n = prod(shape)
    nb = -(-n // qs["blocksize"])
    assert qs["quant_type"] == qt and qs["blocksize"] == BLOCKSIZE and qs["dtype"] == dtype_name(spec["dtype"]), qs
    w = sd[name]
    assert w.dtype == torch.uint8 and list(w.shape) == [-(-n // 2), 1], (name, w.shape)
    assert torch.equal(sd[f"{name}.quant_map"], torch.from_numpy(CODES[qt]))
    keys = {k[len(name) + 1:] for k in sd if k.startswith(name + ".")}
    if spec["dq"]:
        assert keys == {"absmax", "nested_absmax", "nested_quant_map", "quant_map",
                        f"quant_state.bitsandbytes__{qt}"}, keys
        assert sd[f"{name}.absmax"].dtype == torch.uint8 and list(sd[f"{name}.absmax"].shape) == [nb]
        assert sd[f"{name}.nested_absmax"].dtype == torch.float32
        assert list(sd[f"{name}.nested_absmax"].shape) == [-(-nb // NESTED_BLOCKSIZE)]
        assert sd[f"{name}.nested_quant_map"].dtype == torch.float32
        assert list(sd[f"{name}.nested_quant_map"].shape) == [256]
        assert qs["nested_blocksize"] == NESTED_BLOCKSIZE and qs["nested_dtype"] == "float32", qs
        assert set(qs) == {"quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype",
                           "nested_offset"}, qs
    else:
        assert keys == {"absmax", "quant_map", f"quant_state.bitsandbytes__{qt}"}, keys
        assert sd[f"{name}.absmax"].dtype == torch.float32 and list(sd[f"{name}.absmax"].shape) == [nb]
        assert set(qs) == {"quant_type", "blocksize", "dtype", "shape"}, qs
    return qs


def decode_saved(sd: dict, name: str, qs: dict, spec: dict) -> tuple[torch.Tensor, np.ndarray]:
    """numpy decode of one saved quantized Linear (NF4.md 'Dequantize'); also checked against bitsandbytes."""
    code = CODES[spec["qt"]]
    shape = qs["shape"]
    n = prod(shape)
    if spec["dq"]:
        absmax = Ref.absmax_decode(sd[f"{name}.absmax"].numpy(), sd[f"{name}.nested_absmax"].numpy(),
                                   f32(qs["nested_offset"]), sd[f"{name}.nested_quant_map"].numpy())
    else:
        absmax = sd[f"{name}.absmax"].numpy()
    w = Ref.dequant_4bit(sd[name].numpy(), absmax, code, n, qs["blocksize"])
    dt = getattr(torch, qs["dtype"])
    wt = to_dtype(w, dt, shape)
    # bitsandbytes' own decode of the saved state
    qsd = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
    state = BF.QuantState.from_dict(qsd, device=torch.device("cpu"))
    bw = BF.dequantize_4bit(sd[name], state)
    assert same_bits(bw, wt), name
    return wt, absmax


def build_model(spec: dict, out: Path, diag: dict, dyn_seen: dict) -> dict:
    src = REPO / spec["src"]
    folder = out / spec["name"]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cls = model_class(spec["family"])
    # quantize while loading, then save BEFORE any forward (no repacking for the AVX512-BF16 CPU path)
    qm = cls.from_pretrained(str(src), quantization_config=bnb_config(spec["qt"], spec["dq"]), dtype=spec["dtype"],
                             attn_implementation="eager")
    qm.save_pretrained(str(folder))
    del qm
    for fn in TOKENIZER_FILES:
        if (src / fn).exists():
            shutil.copyfile(src / fn, folder / fn)
    for p in folder.iterdir():
        p.chmod(0o644)

    files = sorted(p.name for p in folder.glob("*.safetensors"))
    assert files == ["model.safetensors"], files
    sd = read_safetensors(folder / "model.safetensors")
    src_sd = read_safetensors(src / "model.safetensors")
    quant, other = split_saved(sd)
    assert quant, spec["name"]
    print(f"{spec['name']}: {len(quant)} quantized Linear weights:", file=sys.stderr)
    for q in quant:
        print(f"    {q}  {sd[q + '.quant_state.bitsandbytes__' + spec['qt']].numel()}B state", file=sys.stderr)
    print(f"  not quantized: {other}", file=sys.stderr)

    decoded = OrderedDict()
    requant_ok = True
    cpu_kernel = []
    for q in quant:
        qs = check_table(sd, q, spec)
        wt, absmax_used = decode_saved(sd, q, qs, spec)
        decoded[q] = wt
        if spec["dq"]:
            dyn_seen[f"{spec['name']}/model.safetensors:{q}.nested_quant_map"] = sd[f"{q}.nested_quant_map"].numpy()
        # re-quantize the source weight with the re-implementation: same bytes as the file
        w_src = src_sd[q]
        assert w_src.dtype == spec["dtype"], (q, w_src.dtype)
        assert list(w_src.shape) == qs["shape"]
        rp, ra = Ref.quantize_4bit(w_src.float().numpy(), BLOCKSIZE, CODES[spec["qt"]])
        ok = np.array_equal(rp, sd[q].numpy().reshape(-1))
        if spec["dq"]:
            qa, nested, off = Ref.double_quant(ra, CODES["dynamic_signed"])
            ok = ok and np.array_equal(qa, sd[f"{q}.absmax"].numpy())
            ok = ok and np.array_equal(nested.view(np.uint32), sd[f"{q}.nested_absmax"].numpy().view(np.uint32))
            ok = ok and bits(off) == bits(qs["nested_offset"])
        else:
            ok = ok and np.array_equal(ra.view(np.uint32), sd[f"{q}.absmax"].numpy().view(np.uint32))
        assert ok, (spec["name"], q)
        requant_ok = requant_ok and ok
        ck = bnb_c_dequantize_4bit(sd[q], torch.from_numpy(absmax_used), BLOCKSIZE, spec["qt"], qs["shape"],
                                   getattr(torch, qs["dtype"]))
        if not same_bits(ck, wt):
            cpu_kernel.append(OrderedDict(weight=q, shape=qs["shape"],
                                          max_abs_diff=fl((ck.float() - wt.float()).abs().max())))
    diag[spec["name"]] = cpu_kernel
    save_safetensors(folder / "decoded.safetensors", decoded)

    # unquantized tensors are stored as in the source (same dtype and values)
    for k in other:
        assert k in src_sd, k
        assert same_bits(sd[k], src_sd[k]), k
    quant_set = set(quant)
    not_converted = sorted(k for k in src_sd if k not in quant_set and k not in other)  # e.g. tied lm_head

    # the examples and the loss definition of the source fixture
    src_ref = json.loads((src / "reference.json").read_text())
    examples = [dict(input_ids=e["input_ids"], label_ids=e["label_ids"]) for e in src_ref["examples"]]
    n_tot = sum(len(e["label_ids"]) for e in examples)

    # (a) f32 model whose Linear weights are the decoded 4-bit weights
    fm = cls.from_pretrained(str(src), dtype=torch.float32, attn_implementation="eager").eval()
    msd = fm.state_dict()
    with torch.no_grad():
        for k, v in list(decoded.items()) + [(k, sd[k]) for k in other]:
            assert k in msd and list(msd[k].shape) == list(v.shape), k
            msd[k].copy_(v.float())
        covered = {msd[k].data_ptr() for k in list(decoded) + other}
        for k, v in fm.state_dict().items():
            if k in decoded:
                assert torch.equal(v, decoded[k].float()), k
            assert v.data_ptr() in covered, ("not set from the saved file", k)  # tied copies share storage
    f32_sums = example_losses(fm, spec["family"], examples)
    # sanity: the source's own f32 loss with the original weights
    src_mean = src_ref["mean_loss"]
    del fm

    # (b) bitsandbytes' own 4-bit forward (bf16 compute), fresh load of the saved folder, train mode, dropout 0
    drop = {"dropout_rate": 0.0} if spec["family"] == "t5" else {"attention_dropout": 0.0}
    bm = cls.from_pretrained(str(folder), dtype=spec["dtype"], attn_implementation="eager", **drop)
    bm.train()
    for mod in bm.modules():
        if isinstance(mod, torch.nn.Dropout):
            assert mod.p == 0.0, mod
    n4 = sum(isinstance(mod, bitsandbytes.nn.Linear4bit) for mod in bm.modules())
    assert n4 == len(quant), (n4, len(quant))
    bnb_sums = example_losses(bm, spec["family"], examples)
    for mod in bm.modules():
        if isinstance(mod, bitsandbytes.nn.Linear4bit):
            assert not getattr(mod.weight.quant_state, "packing_format_for_cpu", False)
    del bm

    ref = OrderedDict()
    ref["source"] = spec["src"]
    ref["model_type"] = json.loads((src / "config.json").read_text())["model_type"]
    ref["versions"] = versions()
    ref["quantization"] = OrderedDict(
        quant_type=spec["qt"], double_quant=spec["dq"], blocksize=BLOCKSIZE, compute_dtype="bfloat16",
        load_dtype=dtype_name(spec["dtype"]),
        call=(f"{cls.__name__}.from_pretrained(source, quantization_config=BitsAndBytesConfig(load_in_4bit=True, "
              f"bnb_4bit_quant_type={spec['qt']!r}, bnb_4bit_use_double_quant={spec['dq']}, "
              f"bnb_4bit_compute_dtype=torch.bfloat16), dtype=torch.{dtype_name(spec['dtype'])}) then "
              f"save_pretrained(folder) before any forward"),
    )
    ref["quantized"] = quant
    ref["unquantized"] = other
    ref["unquantized_dtypes"] = OrderedDict((k, dtype_name(sd[k].dtype)) for k in other)
    ref["source_tensors_not_saved"] = not_converted
    ref["decoded_file"] = "decoded.safetensors"
    ref["loss"] = (
        "T5: sum over the label tokens of -log_softmax(logits) in float64, logits from model(input_ids=input_ids, "
        "labels=label_ids) (decoder input = label_ids shifted right after decoder_start_token_id 0)"
        if spec["family"] == "t5" else
        "decoder: sequence = input_ids ++ label_ids, positions 0..L-1, no attention mask; logits at position i "
        "predict token i+1; sum over the label tokens only of -log_softmax(logits) in float64"
    )
    ref["f32_model"] = (
        f"{cls.__name__}.from_pretrained(source, dtype=float32, eager attention), eval mode, every quantized "
        "Linear weight replaced by its decoded value (decoded.safetensors, cast to f32), every other tensor by "
        "the saved tensor cast to f32"
    )
    ref["examples"] = [
        OrderedDict(input_ids=e["input_ids"], label_ids=e["label_ids"], n_tokens=len(e["label_ids"]),
                    loss_sum_f32=s)
        for e, s in zip(examples, f32_sums)
    ]
    ref["mean_loss_f32"] = sum(f32_sums) / n_tot
    ref["source_mean_loss_f32"] = src_mean
    ref["bnb_bf16"] = OrderedDict(
        per_example_loss_sum=bnb_sums,
        mean_loss=sum(bnb_sums) / n_tot,
        note=(
            f"bitsandbytes' own forward: {cls.__name__}.from_pretrained(<this folder>, dtype="
            f"{dtype_name(spec['dtype'])}, eager attention, dropout 0 via the config), train mode, torch.no_grad(): "
            "each Linear4bit casts its input to bf16, dequantizes its weight to bf16 (nested absmax decoded in f32 "
            "first), F.linear in bf16 (+ bias cast to bf16), output cast back to the input dtype; every other module "
            f"in {dtype_name(spec['dtype'])}. dequantize_4bit is bitsandbytes' torch kernel (the CPU C kernel "
            "is wrong for rows that are not a multiple of the blocksize; see manifest.json)"
        ),
    )
    dump_json(folder / "reference.json", ref)
    for p in folder.iterdir():
        p.chmod(0o644)
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"{spec['name']:14s} mean_f32={ref['mean_loss_f32']:.6f} (source {src_mean:.6f}) "
          f"bnb_bf16={ref['bnb_bf16']['mean_loss']:.6f} quantized={len(quant)} size={size / 1024:.0f}KiB "
          f"requant_ok={requant_ok}", file=sys.stderr)
    return OrderedDict(source=spec["src"], quant_type=spec["qt"], double_quant=spec["dq"],
                       load_dtype=dtype_name(spec["dtype"]), n_quantized=len(quant),
                       mean_loss_f32=ref["mean_loss_f32"], bnb_bf16_mean_loss=ref["bnb_bf16"]["mean_loss"],
                       source_mean_loss_f32=src_mean, requantized_bitwise_by_reimplementation=requant_ok,
                       bytes=size)


# --------------------------------------------------------------------------------------


CODES: dict = {}

NOTES = [
    "quantize_4bit on the CPU is bitsandbytes' torch implementation (backends/default/ops.py; backends/cpu registers "
    "no quantize_4bit) for f32, bf16 and f16 input alike: the input is converted exactly to f32 first",
    "full blocks: scaled = clamp(x * (1.0 / absmax.clamp(min=1e-38)), -1, 1): the reciprocal is an f32 division "
    "(Tensor.__rtruediv__ = reciprocal() * 1.0), then an f32 multiply; the stored absmax is the unclamped max|x| (0 for "
    "an all-zero block, whose values all get the index of the code nearest 0)",
    "short last block: am = max|x|.clamp(min=1e-38) (stored clamped: an all-zero tail stores f32(1e-38) = "
    "9.99999935e-39, subnormal), scaled = clamp(x / am, -1, 1), a true f32 division, which differs from x * (1/am) "
    "in the last bit for some x (blocks.json input divrecip)",
    "index = torch.bucketize(scaled, midpoints, right=False) = number of midpoints strictly below scaled (a value "
    "exactly on a midpoint takes the lower index); midpoints[i] = (c[i] + c[i+1]) / 2 in f32 over the code sorted "
    "ascending; fp4: sort order (codes.json fp4_sorted_order) maps the bucket back to the fp4 index; +0 (index 0) "
    "sorts before the second +0 (index 8) and the midpoint between them is 0: scaled <= 0 (incl. small negatives "
    "above -0.0026) -> index 0, small positives -> index 8",
    "packing: byte i = q[2i] << 4 | q[2i+1], shape [ceil(n/2), 1]; odd n: a 0.0 is appended before bucketing, "
    "so the last low nibble is 7 for nf4 and 0 for fp4",
    "double quant: offset = absmax.mean() = torch's f32 cascade sum / n (not a float64 mean; Ref torch_sum_f32: "
    "8-lane vectorized inner sum, 4 interleaved rows, 4 levels of 16; single-threaded: above 32768 blocks with "
    "several threads torch splits the sum and the last bit can change)",
    "nested: quantize_blockwise(absmax - offset, code=create_dynamic_map(signed=True), blocksize=256) runs the C "
    "kernel quantize_cpu_impl<float>: per 256-block absmax = max|v|, if 0: all codes 0; else inv = 1.0f / absmax "
    "(f32 division), v' = clamp(v * inv, -1, 1), t = (v' + 1.0f) * 0.5f, j = (uint16)(int)fma(t, 65535.0f, 0.5f) "
    "(GCC contracts this to vfmadd213ss: ONE rounding), code = lut[j] where lut[i] = number of midpoints "
    "0.5f * (c[k] + c[k+1]) strictly below f32(f32(2i) / 65535.0f) - 1.0f: a 65536-step grid, so the result is "
    "NOT always the nearest code (near 0, where the dynamic map is dense)",
    "dequant: absmax_i = f32(f32(dyn[qa_i] * nested_absmax[i / 256]) + offset) (two roundings, no fma), w_j = "
    "f32(code[q_j] * absmax[j / blocksize]) rounded to the stored dtype (RNE)",
    "nested_quant_map in the file = create_dynamic_map(signed=True) unchanged (codes.json); its entry 0 is "
    "-0.99296875, not -1.0, and entry 127 is 0.0",
    "fp4 code from get_4bit_type has +0.0 at index 8 (the list holds the int -0); the C scalar LUT has -0.0f there, "
    "the C AVX-512 LUT +0.0f",
    "bitsandbytes' CPU dequantize_4bit C kernel (AVX-512 branch, taken when the row length is a multiple of 16 and "
    "the blocksize < 2048) indexes absmax[row * (cols / blocksize) + col / blocksize]: wrong unless cols is a "
    "multiple of the blocksize (cpu_kernel_checks; this machine's result). The fixtures use bitsandbytes' torch "
    "kernel, registered as the CPU kernel by this script",
    "eval-mode forward of a bitsandbytes 4-bit model on an AVX512-BF16 CPU first repacks the weight "
    "(_convert_weight_packed_for_cpu: absmax.reshape(out, in // blocksize)), which raises for in_features < 64 and "
    "for in_features not a multiple of 64 (all four models here); the reference 4-bit forward runs in train mode",
    "transformers keeps T5's `wo` (_keep_in_fp32_modules) and lm_head / embeddings out of 4-bit; the kept tensors "
    "are saved in the load dtype (reference.json unquantized_dtypes)",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(FIX / "nf4"), type=Path)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    use_torch_dequantize_kernel_on_cpu()
    CODES.update(codebooks())
    diag = OrderedDict()

    # 2. blocks
    run_blocks(out, CODES, diag)

    # 3. models
    dyn_seen = OrderedDict()
    models = OrderedDict()
    for spec in MODELS:
        models[spec["name"]] = build_model(spec, out, diag, dyn_seen)

    # 1. codes (needs a saved double-quant file)
    first = next(iter(dyn_seen))
    saved = dyn_seen[first]
    for k, v in dyn_seen.items():
        assert np.array_equal(v.view(np.uint32), saved.view(np.uint32)), k
    bnf, onf = Ref.sorted_bounds(CODES["nf4"])
    bfp, ofp = Ref.sorted_bounds(CODES["fp4"])
    codes = OrderedDict()
    for key in ("nf4", "fp4", "dynamic_signed"):
        codes[key] = fl_list(CODES[key])
        codes[key + "_bits"] = bits_list(CODES[key])
    codes["dynamic_signed_as_saved"] = fl_list(saved)
    codes["dynamic_signed_as_saved_bits"] = bits_list(saved)
    codes["dynamic_signed_as_saved_source"] = first
    codes["dynamic_signed_as_saved_equals_create_dynamic_map"] = bool(
        np.array_equal(saved.view(np.uint32), CODES["dynamic_signed"].view(np.uint32)))
    codes["nf4_midpoints"] = fl_list(bnf)
    codes["nf4_midpoints_bits"] = bits_list(bnf)
    codes["fp4_sorted_order"] = [int(i) for i in ofp]
    codes["fp4_midpoints"] = fl_list(bfp)
    codes["fp4_midpoints_bits"] = bits_list(bfp)
    codes["description"] = (
        "nf4 / fp4: bitsandbytes.functional.get_4bit_type(<type>, device='cpu') (index = 4-bit value); "
        "dynamic_signed: create_dynamic_map(signed=True) (sorted ascending; the 8-bit code of double quantization); "
        "dynamic_signed_as_saved: the nested_quant_map tensor of a saved double-quant file (all files here hold the "
        "same bits); *_midpoints: the f32 midpoints quantize_4bit buckets against ((c[i]+c[i+1])/2 over the code "
        "sorted ascending; for fp4 `fp4_sorted_order` maps a bucket back to the 4-bit value); floats are the exact "
        "f32 values, *_bits their IEEE-754 bit patterns"
    )
    dump_json(out / "codes.json", codes)

    manifest = OrderedDict()
    manifest["versions"] = versions()
    manifest["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    manifest["notes"] = NOTES
    manifest["models"] = models
    manifest["cpu_kernel_checks"] = OrderedDict(
        description=(
            "machine-dependent: where bitsandbytes' CPU C dequantize_4bit kernel (libbitsandbytes_cpu.so, called "
            "directly) differs bitwise from the torch kernel the fixtures use"),
        avx512=_HAS_AVX512, **diag)
    dump_json(out / "manifest.json", manifest)
    for p in out.iterdir():
        if p.is_file():
            p.chmod(0o644)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total {total / 1024:.0f} KiB; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"bitsandbytes {bitsandbytes.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
