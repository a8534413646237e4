#!/usr/bin/env python3
"""Independent PyTorch reference for the three prompt methods of `ept`.

Vanilla prompt tuning (Lester et al. 2021), DePT (Shi & Lipani 2024) and EPT
(Lan et al. 2024) on top of a frozen Hugging Face `T5ForConditionalGeneration`,
following docs/FORMAT.md ("The forward pass these tensors define") to the
letter and /work/shared/docs/METHOD.md §1-4 for the method and initialisations.

    python scripts/prompt_reference.py --out tests/fixtures/prompt

writes, for every case in CASES, a directory <out>/<case>/ with

    prompt.safetensors   the prompt checkpoint (FORMAT.md layout, random
                         untrained but non-degenerate values, ept.* metadata)
    grads.safetensors    d loss / d tensor for every tensor of prompt.safetensors,
                         under the same names
    forward.safetensors  intermediates for debugging: `ab` = scaling*A@B [m,d]
                         (absent without decomposition) and `p_new` [n,d]
    reference.json       loss (token-mean CE of the whole batch), n_tokens,
                         per-example summed CE (each example run alone,
                         unpadded), the token ids, and the settings

plus <out>/svd_init.safetensors (the SVD decomposition of METHOD.md §2 step 2
on a seeded P). Everything is f32 on CPU, the model in eval mode (no dropout),
single-threaded, seeded; the safetensors files are written by a small writer
below with sorted header keys so that reruns are byte-identical (the
`safetensors` package writes metadata in hash order).

Inputs: tests/fixtures/t5/{relu-tied,gated-untied}/ (config.json,
model.safetensors, tokenizer.json) and tests/fixtures/data.jsonl.

Decoder cases (llama-*, qwen2-*; on tests/fixtures/llama/{llama-gqa,qwen2-bias}
from scripts/make_llama_fixtures.py) compose the prompt the way PEFT's prompt
tuning does for CAUSAL_LM, extended by DePT/EPT:

    text          = source ids[:m] (tokenizer WITH specials: BOS for Llama,
                    nothing for Qwen) ++ target ids (no specials) ++ [eos]
    inputs_embeds = [P_new ; E(text) + U], U row j = row j of AB (= scaling·A·B)
                    for text positions j < m, 0 for j >= m (A·B reaches source
                    and target positions alike; right padding beyond the text)
    attention     = [1]*n ++ text mask; positions 0..n+L-1 (no position_ids)
    labels        = -100 on the prompt, the source and the padding; target
                    ids and eos scored (logit at i predicts token i+1)
    loss          = token-mean CE over one right-padded batch (pad id = eos)

Their reference.json has the T5 cases' keys; `input_ids` are the truncated
source ids, `labels` the target ids + eos, `batch_len` the text length of the
batch (without the n prompt rows). llama-pt's loss is also checked against
PEFT's PromptTuning (get_peft_model, CAUSAL_LM) with the same prompt tensor.
Decoder cases only:

    python scripts/prompt_reference.py --cases llama-pt llama-dept \
        llama-ept-cross llama-ept-literal llama-ept-prompt-softmax qwen2-ept-cross-gated

(svd_init.safetensors is only rewritten when a T5 case runs.) Decoder cases
were made with torch 2.15.0, transformers 5.25.0, peft 0.21.2 (CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import struct
import sys
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
PAD_ID, EOS_ID = 0, 1
DECODER_MODELS = ("llama-gqa", "qwen2-bias")  # tests/fixtures/llama/<name>


def is_decoder(model_name: str) -> bool:
    return model_name in DECODER_MODELS


def model_rel(model_name: str) -> str:
    """The model folder relative to the repository root."""
    if is_decoder(model_name):
        return f"tests/fixtures/llama/{model_name}"
    return f"tests/fixtures/t5/{model_name}"


BASE_SEED = 20240517


# --------------------------------------------------------------------------
# Deterministic safetensors I/O
# --------------------------------------------------------------------------

def save_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write f32 tensors in the safetensors format with a sorted, byte-stable header."""
    names = sorted(tensors)
    header: "OrderedDict[str, object]" = OrderedDict()
    if metadata:
        header["__metadata__"] = OrderedDict((k, str(metadata[k])) for k in sorted(metadata))
    blobs, offset = [], 0
    for name in names:
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        raw = t.numpy().astype("<f4").tobytes()
        header[name] = OrderedDict(
            [("dtype", "F32"), ("shape", list(t.shape)), ("data_offsets", [offset, offset + len(raw)])]
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


def load_safetensors(path: str):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


# --------------------------------------------------------------------------
# Initialisations (METHOD.md §2 step 1-2, §3 A/B/E, §4) — readable reference
# --------------------------------------------------------------------------

def init_prompt_from_vocab(embedding: torch.Tensor, n: int, generator: torch.Generator,
                           pool: int = 5000) -> torch.Tensor:
    """Lester et al.'s `from_sample_of_embeddings`: n rows of the frozen embedding
    matrix for token ids drawn uniformly without replacement from [0, pool)
    (pool capped at the vocabulary size; pad/eos/unk not excluded); with
    replacement only if n > pool."""
    pool = min(pool, embedding.shape[0])
    if n <= pool:
        ids = torch.randperm(pool, generator=generator)[:n]
    else:
        ids = torch.randint(0, pool, (n,), generator=generator)
    return embedding[ids].detach().clone().float()


def init_prompt_random(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """PT's N(0, 1) init (kept for comparison only)."""
    return torch.randn(n, d, generator=generator)


def align_prompt(p: torch.Tensor, m: int, mode: str = "zero-pad") -> torch.Tensor:
    """METHOD.md §3 A: bring P (l rows) to m rows. `zero-pad` appends zero rows,
    `tile` repeats P (P, P, ... cut at m rows). If l > m both keep the first m rows."""
    l, d = p.shape
    if l >= m:
        return p[:m].clone()
    if mode == "zero-pad":
        return torch.cat([p, p.new_zeros(m - l, d)], dim=0)
    if mode == "tile":
        reps = math.ceil(m / l)
        return p.repeat(reps, 1)[:m].clone()
    raise ValueError(f"unknown alignment {mode!r}")


def svd_decompose(p: torch.Tensor, m: int, r: int, align: str = "zero-pad",
                  split: str = "balanced"):
    """METHOD.md §2 step 2 + §3 A/B: rank-r truncated SVD of the aligned P.
    Returns (A [m,r], B [r,d], S [r]); A@B is the best rank-r approximation of
    the aligned P. Computed in f64, returned in f32. Signs of (A, B) columns/rows
    are whatever LAPACK gives; only A@B is unique (for distinct singular values)."""
    x = align_prompt(p.double(), m, align)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    u, s, vh = u[:, :r], s[:r], vh[:r]
    if split == "balanced":
        root = s.sqrt()
        a, b = u * root, root[:, None] * vh
    elif split == "left-orthonormal":
        a, b = u, s[:, None] * vh
    else:
        raise ValueError(f"unknown split {split!r}")
    return a.float(), b.float(), s.float()


def dept_lora_init(m: int, r: int, d: int):
    """DePT (peft/tuners/prompt_tuning_lora.py): A [m,r] Kaiming-uniform with
    a=sqrt(5) (fan_in = r, so U(-1/sqrt(r), 1/sqrt(r))), B [r,d] = 0. Uses the
    global torch RNG, as DePT does."""
    a = torch.empty(m, r)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    return a, torch.zeros(r, d)


def dept_scaling(r: int, lora_alpha: float = 8.0) -> float:
    """DePT's lora_alpha / sqrt(r) (0 when r = 0)."""
    return 0.0 if r == 0 else lora_alpha / math.sqrt(r)


def budget_rank(l: int, s: int, m: int, d: int) -> int:
    """r from l·d = s·d + (m+d)·r, rounded down (METHOD.md §1)."""
    return ((l - s) * d) // (m + d)


class Expert(nn.Module):
    """E_i(x) = W1_i · ReLU(W2_i · x), W2_i: d -> h, W1_i: h -> d (METHOD.md §2 step 5)."""

    def __init__(self, d: int, h: int, zero_out: bool = False):
        super().__init__()
        self.w2 = nn.Linear(d, h)  # nn.Linear default init (METHOD.md §3 E default)
        self.w1 = nn.Linear(h, d)
        if zero_out:  # §3 E alternative: zero-init the output layer
            nn.init.zeros_(self.w1.weight)
            nn.init.zeros_(self.w1.bias)

    def forward(self, x):
        return self.w1(F.relu(self.w2(x)))


# --------------------------------------------------------------------------
# The prompt module: FORMAT.md's forward pass
# --------------------------------------------------------------------------

FUSIONS = ("off", "literal", "prompt-softmax", "cross-attention")


class PromptModule(nn.Module):
    def __init__(self, tensors: dict, scaling: float, fusion: str, multi_space: bool):
        super().__init__()
        assert fusion in FUSIONS
        self.scaling = float(scaling)
        self.fusion = fusion
        self.multi_space = multi_space
        self.prompt = nn.Parameter(tensors["prompt"].clone())
        self.has_lora = "lora_a" in tensors
        if self.has_lora:
            self.lora_a = nn.Parameter(tensors["lora_a"].clone())
            self.lora_b = nn.Parameter(tensors["lora_b"].clone())
        else:
            assert fusion == "off", "fusion needs A·B"
        self.n_experts = 0
        if multi_space:
            self.n_experts = sum(1 for k in tensors if k.startswith("experts.") and k.endswith(".w2.weight"))
            h, d = tensors["experts.0.w2.weight"].shape
            self.experts = nn.ModuleList(Expert(d, h) for _ in range(self.n_experts))
            self.gate = nn.Linear(d, self.n_experts)
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if name.startswith(("experts.", "gate.")):
                        p.copy_(tensors[name])

    def trainable(self) -> "OrderedDict[str, nn.Parameter]":
        return OrderedDict(self.named_parameters())

    def ab(self):
        """AB = lora_scaling · lora_a · lora_b, [m, d]."""
        if not self.has_lora:
            return None
        return self.scaling * (self.lora_a @ self.lora_b)

    def p_new(self, ab):
        ps = self.prompt  # [n, d]
        d = ps.shape[1]
        # Fusion (Eq. 3-4)
        if self.fusion == "off":
            pf = ps
        else:
            logits = ps @ ab.t() / math.sqrt(d)  # [s, m]
            if self.fusion == "literal":
                w = torch.softmax(logits, dim=1)  # over m
                pf = ps + w.sum(dim=1, keepdim=True) * ps
            elif self.fusion == "prompt-softmax":
                w = torch.softmax(logits, dim=0)  # over s
                pf = ps + w.sum(dim=1, keepdim=True) * ps
            else:  # cross-attention
                w = torch.softmax(logits, dim=1)  # over m
                pf = ps + w @ ab
        # Multi-space (Eq. 5-7)
        if self.multi_space:
            g = torch.softmax(self.gate(ps), dim=-1)  # [s, N_e]
            amend = sum(g[:, i:i + 1] * self.experts[i](ps) for i in range(self.n_experts))
        else:
            amend = torch.zeros_like(ps)
        return amend + pf  # Eq. 8

    def encoder_inputs(self, embeds: torch.Tensor, mask: torch.Tensor):
        """embeds [b,t,d] (t <= m), mask [b,t] -> (inputs_embeds, attention_mask, ab, p_new)."""
        b, t, _ = embeds.shape
        ab = self.ab()
        if ab is not None:
            assert t <= ab.shape[0], f"batch length {t} > m {ab.shape[0]}"
            i_up = embeds + ab[:t].unsqueeze(0)  # Eq. 2
        else:
            i_up = embeds
        p = self.p_new(ab)
        n = p.shape[0]
        x = torch.cat([p.unsqueeze(0).expand(b, -1, -1), i_up], dim=1)
        m2 = torch.cat([mask.new_ones(b, n), mask], dim=1)
        return x, m2, ab, p


# --------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------

def load_t5(folder: str):
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # Check what transformers actually uses against the file on disk.
    raw, _ = load_safetensors(os.path.join(folder, "model.safetensors"))
    cfg = json.load(open(os.path.join(folder, "config.json")))
    shared = None
    for k in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if k in raw:
            shared = raw[k]
            break
    assert shared is not None
    assert torch.equal(model.shared.weight, shared), "shared embedding mismatch"
    assert torch.equal(model.encoder.embed_tokens.weight, shared)
    assert torch.equal(model.decoder.embed_tokens.weight, shared)
    if "lm_head.weight" in raw and not torch.equal(raw["lm_head.weight"], shared):
        assert torch.equal(model.lm_head.weight, raw["lm_head.weight"]), "untied lm_head not used"
        assert not torch.equal(model.lm_head.weight, model.shared.weight)
        lm = "untied lm_head.weight"
    else:
        assert torch.equal(model.lm_head.weight, shared)
        lm = "tied to shared"
    want_scale = cfg.get("scale_decoder_outputs", cfg.get("tie_word_embeddings", True) is not False)
    got_scale = getattr(model.config, "scale_decoder_outputs", None)
    if got_scale is not None:
        assert bool(got_scale) == bool(want_scale), (got_scale, want_scale)
    return model, {"lm_head": lm, "rescale_decoder_output": bool(want_scale)}


def load_tokenizer(folder: str):
    from transformers import PreTrainedTokenizerFast

    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    except Exception:  # only tokenizer.json available
        return PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(folder, "tokenizer.json"),
            pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        )


def load_data(path: str):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def tokenize(tok, data, m: int):
    """Sources truncated to m tokens with </s> kept last; targets not truncated."""
    srcs, tgts = [], []
    for ex in data:
        ids = tok(ex["source"], truncation=True, max_length=m)["input_ids"]
        # cross-check against an explicit truncate-then-append-</s>
        bare = tok(ex["source"], add_special_tokens=False)["input_ids"]
        assert ids == bare[: m - 1] + [EOS_ID], (ids, bare)
        srcs.append(ids)
        tgt = tok(ex["target"])["input_ids"]
        assert tgt[-1] == EOS_ID
        tgts.append(tgt)
    return srcs, tgts


def pad_batch(srcs, tgts, pad_to: int | None = None):
    t = max(len(s) for s in srcs) if pad_to is None else pad_to
    u = max(len(x) for x in tgts)
    ids = torch.full((len(srcs), t), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(srcs), t), dtype=torch.long)
    labels = torch.full((len(tgts), u), -100, dtype=torch.long)
    for i, (s, y) in enumerate(zip(srcs, tgts)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def run(model, prompt: PromptModule, ids, mask, labels):
    embeds = model.get_input_embeddings()(ids)
    x, m2, ab, p = prompt.encoder_inputs(embeds, mask)
    out = model(inputs_embeds=x, attention_mask=m2, labels=labels)
    return out, ab, p


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    model: str = "relu-tied"
    method: str = "ept"  # pt | dept | ept
    n: int = 3  # rows of `prompt` (l for PT, s otherwise)
    r: int = 2  # 0: no decomposition
    m: int = 48  # data.jsonl sources are 32, 42, 55, 61, 144, 208 tokens: 4 truncated, 2 shorter
    scaling: float = 1.0
    fusion: str = "off"
    multi_space: bool = False
    num_experts: int = 0
    hidden: int | None = None  # experts' hidden width, default m
    pad_to_m_check: bool = False


CASES = [
    Case("pt", method="pt", n=5, r=0),
    Case("dept", method="dept", scaling=8 / math.sqrt(2)),
    Case("ept-cross", fusion="cross-attention", multi_space=True, num_experts=3),
    Case("ept-literal", fusion="literal", multi_space=True, num_experts=3),
    Case("ept-prompt-softmax", fusion="prompt-softmax", multi_space=True, num_experts=3),
    Case("ablate-decomp"),
    Case("ablate-decomp-fusion", fusion="cross-attention"),
    Case("ablate-decomp-multispace", multi_space=True, num_experts=3),
    Case("ablate-multispace", n=5, r=0, multi_space=True, num_experts=3),
    Case("ept-cross-gated", model="gated-untied", fusion="cross-attention", multi_space=True, num_experts=3),
    # m above the longest source (208 tokens): no input is truncated, rows of A·B
    # past the batch length only reach the loss through fusion. h = 24 (not m)
    # keeps the fixture small and exercises a hidden width read from the shapes.
    Case("ept-short-batch", m=216, hidden=24, fusion="cross-attention", multi_space=True, num_experts=3,
         pad_to_m_check=True),
    # Decoders (llama-gqa: d = 64; sources 36, 76, 165, 286, 53, 73 tokens with BOS, targets 3-6 + eos).
    # m = 38: example 0 (36 source tokens) is not truncated and A·B rows 36, 37 land on its first two
    # target tokens (a target straddling m); the other five are truncated to 38, their targets at j >= m.
    # Budget as for T5: s = 3, r = 2, l = (s·d + (m+d)·r) // d = 6, and PT gets n = l = 6.
    # Experts' hidden width: m (the default) for llama-ept-cross, 16 (read from the shapes) elsewhere.
    Case("llama-pt", model="llama-gqa", method="pt", n=6, r=0, m=38),
    Case("llama-dept", model="llama-gqa", method="dept", m=38, scaling=8 / math.sqrt(2)),
    Case("llama-ept-cross", model="llama-gqa", m=38, fusion="cross-attention", multi_space=True, num_experts=3),
    Case("llama-ept-literal", model="llama-gqa", m=38, hidden=16, fusion="literal", multi_space=True,
         num_experts=3),
    Case("llama-ept-prompt-softmax", model="llama-gqa", m=38, hidden=16, fusion="prompt-softmax",
         multi_space=True, num_experts=3),
    # qwen2-bias (d = 32, no BOS; sources 32, 57, 143, 235, 45, 59 tokens, targets 3-5 + eos): m = 48, so
    # examples 0 and 4 lie entirely inside A·B (4 fills exactly 45 + 3 = 48 rows), the rest are truncated.
    # l = (3·32 + 80·2) // 32 = 8. The T5 ept-cross-gated case is ept-cross on the second backbone.
    Case("qwen2-ept-cross-gated", model="qwen2-bias", m=48, hidden=16, fusion="cross-attention",
         multi_space=True, num_experts=3),
]


def make_prompt_tensors(case: Case, d: int) -> "OrderedDict[str, torch.Tensor]":
    """Random, untrained but non-degenerate values (B != 0 so gradients flow
    through A·B; experts and gate with nn.Linear's default init)."""
    torch.manual_seed(BASE_SEED + zlib.crc32(case.name.encode()))
    g = torch.Generator().manual_seed(BASE_SEED + 7 * zlib.crc32(case.name.encode()))
    t: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    t["prompt"] = torch.randn(case.n, d, generator=g) * 0.5
    if case.r > 0:
        t["lora_a"] = torch.randn(case.m, case.r, generator=g) * 0.5
        t["lora_b"] = torch.randn(case.r, d, generator=g) * 0.5
    if case.multi_space:
        h = case.hidden or case.m
        for i in range(case.num_experts):
            e = Expert(d, h)
            for k, v in e.state_dict().items():
                t[f"experts.{i}.{k}"] = v.detach().clone()
        gate = nn.Linear(d, case.num_experts)
        for k, v in gate.state_dict().items():
            t[f"gate.{k}"] = v.detach().clone()
    return t


def metadata_for(case: Case, d: int) -> dict:
    s = case.n
    if case.method == "pt" or case.r == 0:
        l = case.n
    else:  # long-prompt length with the same budget: l·d = s·d + (m+d)·r, rounded down
        l = (s * d + (case.m + d) * case.r) // d
    return {
        "ept.format": "1",
        "ept.method": case.method,
        "ept.materialized": "false",
        "ept.fusion": case.fusion,
        "ept.multi_space": "true" if case.multi_space else "false",
        "ept.lora_scaling": repr(float(case.scaling)),
        "ept.max_len": str(case.m),
        "ept.d_model": str(d),
        "ept.model": model_rel(case.model),
        "ept.s": str(s),
        "ept.l": str(l),
        "ept.r": str(case.r),
        "ept.num_experts": str(case.num_experts),
    }


def build_case(case: Case, out_dir: str, models: dict, data) -> dict:
    if is_decoder(case.model):
        return build_decoder_case(case, out_dir, models, data)
    model, tok, lm_info, _ = models[case.model]
    d = model.config.d_model
    tensors = make_prompt_tensors(case, d)
    meta = metadata_for(case, d)
    cdir = os.path.join(out_dir, case.name)
    os.makedirs(cdir, exist_ok=True)
    save_safetensors(os.path.join(cdir, "prompt.safetensors"), tensors, meta)

    # Reload from disk so the reference uses exactly the committed values.
    tensors, meta2 = load_safetensors(os.path.join(cdir, "prompt.safetensors"))
    assert meta2 == meta
    prompt = PromptModule(tensors, float(meta["ept.lora_scaling"]), case.fusion, case.multi_space)
    params = prompt.trainable()
    assert set(params) == set(tensors), (sorted(params), sorted(tensors))

    srcs, tgts = tokenize(tok, data, case.m)
    ids, mask, labels = pad_batch(srcs, tgts)
    out, ab, p = run(model, prompt, ids, mask, labels)
    n_tokens = int((labels != -100).sum())
    # independent check of transformers' reduction: token mean over non-ignored labels
    manual = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1),
                             ignore_index=-100, reduction="sum") / n_tokens
    assert torch.allclose(manual, out.loss, rtol=1e-6, atol=0), (manual, out.loss)
    prompt.zero_grad()
    out.loss.backward()
    loss = float(out.loss.detach())
    grads = OrderedDict((k, v.grad.detach().clone()) for k, v in params.items())
    for k, gr in grads.items():
        assert torch.isfinite(gr).all() and gr.abs().max() > 0, f"{case.name}: zero/non-finite grad {k}"
    save_safetensors(os.path.join(cdir, "grads.safetensors"), grads)
    fwd = OrderedDict(p_new=p.detach())
    if ab is not None:
        fwd["ab"] = ab.detach()
    save_safetensors(os.path.join(cdir, "forward.safetensors"), fwd)

    # per example, alone and unpadded: sum of token CE
    per_ex = []
    with torch.no_grad():
        for s_ids, y in zip(srcs, tgts):
            i1, m1, l1 = pad_batch([s_ids], [y])
            o1, _, _ = run(model, prompt, i1, m1, l1)
            per_ex.append(float(F.cross_entropy(o1.logits[0], l1[0], reduction="sum")))
    # consistency: batch loss == sum of per-example sums / n_tokens
    assert abs(sum(per_ex) / n_tokens - loss) <= 1e-5 * abs(loss), (
        sum(per_ex) / n_tokens, loss)

    ref = OrderedDict()
    ref["case"] = case.name
    ref["model"] = f"tests/fixtures/t5/{case.model}"
    ref["m"] = case.m
    ref["loss"] = loss
    ref["n_tokens"] = n_tokens
    ref["per_example_loss_sum"] = per_ex
    ref["batch_len"] = int(ids.shape[1])
    # the same computation in float64 from the stored (f32) values: how exact the f32 reference is
    loss64, grads64 = f64_reference(models[case.model][3], tensors, case, ids, mask, labels)
    ref["loss_f64"] = loss64
    dev = {"loss": abs(loss - loss64) / abs(loss64)}
    for k, g64 in grads64.items():
        dev[k] = float((grads[k].double() - g64).abs().max() / g64.abs().max())
    worst = max(dev, key=dev.get)
    assert dev[worst] < 1e-5, (case.name, worst, dev[worst])
    ref["input_ids"] = srcs
    ref["labels"] = tgts
    if case.pad_to_m_check:
        assert ids.shape[1] < case.m
        with torch.no_grad():
            ip, mp, lp = pad_batch(srcs, tgts, pad_to=case.m)
            op, _, _ = run(model, prompt, ip, mp, lp)
        ref["loss_padded_to_m"] = float(op.loss)
        assert abs(float(op.loss) - loss) <= 1e-6 * abs(loss), (float(op.loss), loss)
    st = asdict(case)
    st.pop("name")
    st.pop("pad_to_m_check")
    st["hidden"] = (case.hidden or case.m) if case.multi_space else None
    st["lm_head"] = lm_info["lm_head"]
    st["rescale_decoder_output"] = lm_info["rescale_decoder_output"]
    st["metadata"] = meta
    st["loss_reduction"] = "sum of token CE over non-ignored labels / n_tokens (one batch of all examples)"
    ref["settings"] = st
    with open(os.path.join(cdir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    n_trunc = sum(1 for s in srcs if len(s) == case.m)
    print(f"{case.name:26s} loss={loss:.7f} n_tokens={n_tokens} batch_len={ids.shape[1]} "
          f"truncated={n_trunc}/{len(srcs)}")
    return ref


# --------------------------------------------------------------------------
# Decoders (Llama family): PEFT's CAUSAL_LM prompt tuning, extended by DePT/EPT
# --------------------------------------------------------------------------

def load_decoder(folder: str):
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    raw = {}
    for f in sorted(os.listdir(folder)):
        if f.startswith("model") and f.endswith(".safetensors"):
            raw.update(load_safetensors(os.path.join(folder, f))[0])
    msd = model.state_dict()
    for k, v in raw.items():
        assert torch.equal(msd[k], v.float()), k
    emb = raw["model.embed_tokens.weight"].float()
    if "lm_head.weight" in raw:
        assert torch.equal(model.lm_head.weight, raw["lm_head.weight"].float())
        lm = "untied lm_head.weight"
    else:
        assert torch.equal(model.lm_head.weight, emb)
        lm = "tied to embed_tokens"
    eos = model.config.eos_token_id
    return model, {"lm_head": lm, "rescale_decoder_output": False, "eos_token_id": eos,
                   "model_type": model.config.model_type, "folder": folder}


def tokenize_decoder(tok, data, m: int, eos: int, folder: str):
    """Sources with the tokenizer's specials, cut to their first m ids; targets without specials, + eos.
    Cross-checked against the checkpoint's reference.json (make_llama_fixtures.py)."""
    with open(os.path.join(folder, "reference.json"), encoding="utf-8") as f:
        ref = json.load(f)
    srcs, tgts = [], []
    for ex, rex in zip(data, ref["examples"]):
        full = tok(ex["source"])["input_ids"]
        tgt = tok(ex["target"], add_special_tokens=False)["input_ids"] + [eos]
        assert full == rex["input_ids"] and tgt == rex["label_ids"], ex
        srcs.append(full[:m])
        tgts.append(tgt)
    return srcs, tgts


def pad_decoder_batch(srcs, tgts, pad: int):
    """Right padding of text = src ++ tgt; labels -100 except on the target (incl. eos)."""
    texts = [s + y for s, y in zip(srcs, tgts)]
    t = max(len(x) for x in texts)
    ids = torch.full((len(texts), t), pad, dtype=torch.long)
    mask = torch.zeros((len(texts), t), dtype=torch.long)
    labels = torch.full((len(texts), t), -100, dtype=torch.long)
    for i, (s, y) in enumerate(zip(srcs, tgts)):
        ids[i, : len(s) + len(y)] = torch.tensor(s + y)
        mask[i, : len(s) + len(y)] = 1
        labels[i, len(s) : len(s) + len(y)] = torch.tensor(y)
    return ids, mask, labels


def decoder_inputs(prompt: PromptModule, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """[P_new ; E + U] with U row j = AB row j for j < m (0 beyond), mask and labels prefixed for the n rows."""
    b, t, d = embeds.shape
    ab = prompt.ab()
    if ab is not None:
        k = min(t, ab.shape[0])
        u = torch.cat([ab[:k], ab.new_zeros(t - k, d)], dim=0)
        embeds = embeds + u.unsqueeze(0)
    p = prompt.p_new(ab)
    n = p.shape[0]
    x = torch.cat([p.unsqueeze(0).expand(b, -1, -1), embeds], dim=1)
    m2 = torch.cat([mask.new_ones(b, n), mask], dim=1)
    l2 = torch.cat([labels.new_full((b, n), -100), labels], dim=1)
    return x, m2, l2, ab, p


def run_decoder(model, prompt: PromptModule, ids, mask, labels):
    embeds = model.get_input_embeddings()(ids)
    x, m2, l2, ab, p = decoder_inputs(prompt, embeds, mask, labels)
    out = model(inputs_embeds=x, attention_mask=m2, labels=l2)  # no position_ids: 0..n+L-1
    return out, l2, ab, p


def shifted_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token CE, logit i predicting label i+1, -100 ignored (transformers' ForCausalLMLoss, summed)."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum")


def peft_prompt_tuning_losses(model, prompt_tensor: torch.Tensor, ids, mask, labels, singles):
    """PEFT's own PromptTuning (CAUSAL_LM) on the same batch and on each example alone."""
    import warnings

    from peft import PromptTuningConfig, get_peft_model

    with warnings.catch_warnings():  # transformers' FutureWarning on PEFT's is_gradient_checkpointing call
        warnings.simplefilter("ignore", FutureWarning)
        pm = get_peft_model(copy.deepcopy(model), PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=prompt_tensor.shape[0], prompt_tuning_init="RANDOM"))
    pm.eval()
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.copy_(prompt_tensor)
        out = pm(input_ids=ids, attention_mask=mask, labels=labels)
        per = []
        for i1, m1, l1 in singles:
            o1 = pm(input_ids=i1, attention_mask=m1, labels=l1)
            per.append(float(o1.loss) * int((l1 != -100).sum()))
    return float(out.loss), per


def build_decoder_case(case: Case, out_dir: str, models: dict, data) -> dict:
    model, tok, info, model64 = models[case.model]
    d = model.config.hidden_size
    eos = info["eos_token_id"]
    folder = info["folder"]
    tensors = make_prompt_tensors(case, d)
    meta = metadata_for(case, d)
    if case.method == "pt":
        assert case.n == (3 * d + (case.m + d) * 2) // d, "PT length = the budget l of the s=3, r=2 cases"
    cdir = os.path.join(out_dir, case.name)
    os.makedirs(cdir, exist_ok=True)
    save_safetensors(os.path.join(cdir, "prompt.safetensors"), tensors, meta)
    tensors, meta2 = load_safetensors(os.path.join(cdir, "prompt.safetensors"))
    assert meta2 == meta
    prompt = PromptModule(tensors, float(meta["ept.lora_scaling"]), case.fusion, case.multi_space)
    params = prompt.trainable()
    assert set(params) == set(tensors), (sorted(params), sorted(tensors))

    srcs, tgts = tokenize_decoder(tok, data, case.m, eos, folder)
    ids, mask, labels = pad_decoder_batch(srcs, tgts, pad=eos)
    out, l2, ab, p = run_decoder(model, prompt, ids, mask, labels)
    n_tokens = int((labels != -100).sum())
    assert n_tokens == sum(len(y) for y in tgts)
    manual = shifted_ce_sum(out.logits, l2) / n_tokens
    assert torch.allclose(manual, out.loss, rtol=1e-6, atol=0), (manual, out.loss)
    prompt.zero_grad()
    out.loss.backward()
    loss = float(out.loss.detach())
    grads = OrderedDict((k, v.grad.detach().clone()) for k, v in params.items())
    for k, gr in grads.items():
        assert torch.isfinite(gr).all() and gr.abs().max() > 0, f"{case.name}: zero/non-finite grad {k}"
    save_safetensors(os.path.join(cdir, "grads.safetensors"), grads)
    fwd = OrderedDict(p_new=p.detach())
    if ab is not None:
        fwd["ab"] = ab.detach()
    save_safetensors(os.path.join(cdir, "forward.safetensors"), fwd)

    per_ex, singles = [], []
    with torch.no_grad():
        for s_ids, y in zip(srcs, tgts):
            i1, m1, lab1 = pad_decoder_batch([s_ids], [y], pad=eos)
            singles.append((i1, m1, lab1))
            o1, l21, _, _ = run_decoder(model, prompt, i1, m1, lab1)
            per_ex.append(float(shifted_ce_sum(o1.logits, l21)))
    assert abs(sum(per_ex) / n_tokens - loss) <= 1e-5 * abs(loss), (sum(per_ex) / n_tokens, loss)

    ref = OrderedDict()
    ref["case"] = case.name
    ref["model"] = model_rel(case.model)
    ref["m"] = case.m
    ref["loss"] = loss
    ref["n_tokens"] = n_tokens
    ref["per_example_loss_sum"] = per_ex
    ref["batch_len"] = int(ids.shape[1])
    loss64, grads64 = f64_reference(model64, tensors, case, ids, mask, labels, runner=run_decoder)
    ref["loss_f64"] = loss64
    dev = {"loss": abs(loss - loss64) / abs(loss64)}
    for k, g64 in grads64.items():
        dev[k] = float((grads[k].double() - g64).abs().max() / g64.abs().max())
    worst = max(dev, key=dev.get)
    assert dev[worst] < 1e-5, (case.name, worst, dev[worst])
    ref["input_ids"] = srcs
    ref["labels"] = tgts
    st = asdict(case)
    st.pop("name")
    st.pop("pad_to_m_check")
    st["hidden"] = (case.hidden or case.m) if case.multi_space else None
    st["lm_head"] = info["lm_head"]
    st["rescale_decoder_output"] = False  # T5 notion; decoders never rescale
    st["metadata"] = meta
    st["loss_reduction"] = "sum of token CE over non-ignored labels / n_tokens (one batch of all examples)"
    st["composition"] = (
        "decoder: inputs_embeds = [P_new ; E(src[:m] ++ tgt ++ eos) + U], U row j = AB row j for j < m else 0; "
        "attention mask [1]*n ++ text mask; positions 0..n+L-1; labels -100 on prompt, source and padding; "
        "right padding with pad id = eos"
    )
    st["pad_id"] = eos
    if case.method == "pt":
        peft_loss, peft_per = peft_prompt_tuning_losses(model, tensors["prompt"], ids, mask, labels, singles)
        rel = abs(peft_loss - loss) / abs(loss)
        assert rel <= 1e-6, (peft_loss, loss)
        per_rel = max(abs(a - b) / abs(b) for a, b in zip(peft_per, per_ex))
        assert per_rel <= 1e-5, (peft_per, per_ex)
        st["peft_prompt_tuning_loss"] = peft_loss
        st["peft_prompt_tuning_rel_diff"] = rel
        st["peft_prompt_tuning_per_example_max_rel_diff"] = per_rel
    ref["settings"] = st
    with open(os.path.join(cdir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    n_trunc = sum(1 for s in srcs if len(s) == case.m)
    worst_dev = f"{worst}={dev[worst]:.1e}"
    print(f"{case.name:26s} loss={loss:.7f} n_tokens={n_tokens} batch_len={ids.shape[1]} "
          f"truncated={n_trunc}/{len(srcs)} f64_dev({worst_dev})")
    return ref


def f64_reference(model64, tensors, case: Case, ids, mask, labels, runner=None):
    t64 = {k: v.double() for k, v in tensors.items()}
    prompt = PromptModule(t64, case.scaling, case.fusion, case.multi_space).double()
    out = (runner or run)(model64, prompt, ids, mask, labels)[0]
    out.loss.backward()
    return float(out.loss.detach()), {k: v.grad.detach().clone() for k, v in prompt.trainable().items()}


def build_svd_fixture(out_dir: str) -> None:
    g = torch.Generator().manual_seed(BASE_SEED + 1)
    l, d, m, r = 7, 32, 24, 3
    p = torch.randn(l, d, generator=g)
    a, b, s = svd_decompose(p, m, r, align="zero-pad")
    at, bt, st = svd_decompose(p, m, r, align="tile")
    # A@B in f64 from the f64 factors, then f32 (sign-invariant)
    def ab64(align):
        x = align_prompt(p.double(), m, align)
        u, sv, vh = torch.linalg.svd(x, full_matrices=False)
        return ((u[:, :r] * sv[:r]) @ vh[:r]).float()
    ab, ab_t = ab64("zero-pad"), ab64("tile")
    assert torch.allclose(a @ b, ab, atol=1e-5) and torch.allclose(at @ bt, ab_t, atol=1e-5)
    assert ab[l:].abs().max() < 1e-5  # zero offset past row l
    save_safetensors(
        os.path.join(out_dir, "svd_init.safetensors"),
        OrderedDict(P=p, AB=ab, S=s, AB_tile=ab_t, S_tile=st),
        {"l": str(l), "d": str(d), "m": str(m), "r": str(r),
         "split": "balanced: A = U_r S_r^1/2, B = S_r^1/2 V_r^T",
         "AB": "zero-pad alignment", "AB_tile": "tile alignment (P repeated, cut at m rows)"},
    )
    print(f"svd_init: S={s.tolist()} S_tile={st.tolist()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(FIXTURES, "prompt"))
    ap.add_argument("--t5", default=os.path.join(FIXTURES, "t5"))
    ap.add_argument("--llama", default=os.path.join(FIXTURES, "llama"))
    ap.add_argument("--data", default=os.path.join(FIXTURES, "data.jsonl"))
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    data = load_data(args.data)
    cases = CASES if not args.cases else [c for c in CASES if c.name in args.cases]
    unknown = set(args.cases or []) - {c.name for c in CASES}
    if unknown:
        raise SystemExit(f"unknown cases: {sorted(unknown)}")
    models = {}
    for name in sorted({c.model for c in cases}):
        if is_decoder(name):
            folder = os.path.join(args.llama, name)
            model, info = load_decoder(folder)
            model64 = copy.deepcopy(model).double()
            models[name] = (model, load_tokenizer(folder), info, model64)
            print(f"{name}: {model.config.model_type} d={model.config.hidden_size} lm_head={info['lm_head']} "
                  f"eos={info['eos_token_id']}")
            continue
        folder = os.path.join(args.t5, name)
        model, info = load_t5(folder)
        model64 = copy.deepcopy(model).double()
        models[name] = (model, load_tokenizer(folder), info, model64)
        print(f"{name}: d_model={model.config.d_model} ff={model.config.feed_forward_proj} lm_head={info['lm_head']} "
              f"rescale={info['rescale_decoder_output']}")
    for case in cases:
        build_case(case, args.out, models, data)
    if any(not is_decoder(c.model) for c in cases):
        build_svd_fixture(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
