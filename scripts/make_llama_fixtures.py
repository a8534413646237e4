#!/usr/bin/env python3
"""Generate the Llama-family (llama, mistral, qwen2) reference fixtures used by ept's Rust tests.

Usage (from the repository root):

    python scripts/make_llama_fixtures.py --out tests/fixtures/llama

Made with torch 2.15.0 (CPU), transformers 5.25.0, peft 0.21.2, tokenizers 0.23.3,
safetensors 0.8.0, numpy 2.4.6 (the versions are also recorded in <out>/manifest.json).
Everything is seeded, f32, eval mode, eager attention, single-threaded; reruns on the same
library versions are byte-identical.  Writes

    <out>/manifest.json            versions, per-checkpoint seed / switches / self-check numbers
    <out>/tokenizer_cases.json     ids of a few extra strings (bytes, emoji, spaces, newline)
                                   under each of the three tokenizers, with and without specials
    <out>/<name>/config.json, generation_config.json, model*.safetensors
                 [model.safetensors.index.json], tokenizer.json, tokenizer_config.json,
                 special_tokens_map.json, reference.json [, pt_prompt.safetensors]

Tokenizers (trained here on the text of tests/fixtures/data.jsonl plus a fixed English
paragraph; the character '§' of data.jsonl is kept OUT of the training text, so it goes
through byte fallback / raw bytes):

  * `bytefallback` (Llama 2 / TinyLlama / Mistral): BPE with byte_fallback, fuse_unk;
    ids <unk>=0 <s>=1 </s>=2, <0x00>..<0xFF> = 3..258, trained pieces after (384 in all);
    no normalizer; pre-tokenizer Metaspace("▁", prepend_scheme "first", split false);
    post-processor TemplateProcessing "<s> $A" (BOS, no EOS); decoder
    Replace("▁"," ") + ByteFallback + Fuse + Strip(" ", 1, 0).
  * `bytelevel-qwen` (Qwen2): NFC normalizer; Split(Qwen2 regex, isolated) + ByteLevel
    (add_prefix_space false, use_regex false); ByteLevel post-processor (adds nothing);
    ByteLevel decoder; 381 BPE tokens then <|endoftext|> (eos = pad), <|im_start|>, <|im_end|>.
  * `bytelevel-llama3` (Llama 3): as Qwen's but the Llama 3 regex (\\p{N}{1,3}), no
    normalizer, and a TemplateProcessing that prepends <|begin_of_text|> (BOS added);
    382 BPE tokens then <|begin_of_text|>, <|end_of_text|> (eos).

Checkpoints (random weights, see `random_weights`), each exercising a switch:

  llama-gqa               llama, d 64, 4 q heads : 2 kv heads (head_dim 16), 2 layers, ffn 96, default
                          RoPE 1e4, untied head, rms_norm_eps 1e-5, bytefallback; + peft_pt
  llama3-mqa-tied         llama, d 32, 4 : 1 (MQA), explicit head_dim 24 (!= 32/4), 1 layer, ffn 48,
                          RoPE llama3 (factor 8, low 1, high 4, original_max_position_embeddings 32,
                          theta 5e5), tied head, attention_bias + mlp_bias, bytelevel-llama3 (BOS)
  mistral-window-sharded  mistral, d 32, 4 : 2, 2 layers, ffn 48, sliding_window 5, RoPE `dynamic`
                          (factor 2; equal to default while positions < max_position_embeddings 512),
                          untied, 4 shards (max_shard_size 40KB) + model.safetensors.index.json,
                          bytefallback
  qwen2-bias              qwen2 (q/k/v biases, o none), d 32, 4 : 2, 2 layers, ffn 48, tied, RoPE 1e6,
                          use_sliding_window false while sliding_window 4 / max_window_layers 1 are
                          present (must be ignored), bytelevel-qwen (no BOS); + peft_pt
  llama-bf16              llama, d 32, 4 : 4 (plain MHA), 2 layers, ffn 48, untied, stored in bfloat16
  llama-v4-config         llama, d 32, 4 : 2, 1 layer, ffn 48, tied; config.json rewritten in the
                          transformers 4.x layout: rope_theta 2e4 + rope_scaling {"type": "linear",
                          "factor": 2.0}, torch_dtype, transformers_version 4.46.3, no rope_parameters
                          / dtype
All: vocab 384, max_position_embeddings 512, silu, initializer_range 0.1 (informational).
(the other five carry the 5.x layout: rope_parameters {rope_type, rope_theta, ...} + dtype)

Text-to-text on a decoder: source ids = tokenizer(source) WITH special tokens (BOS for the
bytefallback and llama3 tokenizers, nothing for Qwen), label ids = tokenizer(target,
add_special_tokens=False) + [eos]; the sequence is source ++ labels; logits at position i predict
token i+1; only the label ids are scored; positions 0..L-1.

reference.json (exactly these keys):
  {"model_type", "bos_added", "eos_token_id",
   "examples": [{"source", "target", "input_ids", "label_ids", "loss_sum", "n_tokens",
                 "logits" (rows len(src)-1 .. len(src)+len(labels)-2, first 2 examples, else null),
                 "generated_ids" (greedy, batch of 1, max_new_tokens 8, eos included, then stop)}],
   "mean_loss", "batch_mean_loss" (one right-padded batch, pad = eos, transformers' loss),
   "batch_generated_ids" (one LEFT-padded batch through generate(attention_mask=...)),
   ["bf16": {"mean_loss"}], ["peft_pt": {"num_virtual_tokens", "prompt_file",
   "per_example_loss_sum", "mean_loss", "generated_ids"}]}
loss_sum: sum over the scored tokens of -log_softmax, evaluated in float64 from transformers'
f32 logits (also checked against transformers' own loss * n_tokens).
peft_pt: PEFT PromptTuningConfig(task_type CAUSAL_LM, 5 virtual tokens, init RANDOM) through
get_peft_model, the prompt embedding overwritten with seeded N(0, 0.5^2) values (the token
embeddings are N(0, 0.5^2)); per_example_loss_sum is the float64 sum of -log_softmax computed from
the PeftModel forward's logits (which cover the 5 virtual tokens too; labels prefixed with -100 by
PEFT), checked against PEFT's mean loss * n_tokens; generated_ids from peft_model.generate (batch
of 1) with use_cache=False: with peft 0.21.2 + transformers 5.25 the CACHED path re-prepends the
virtual tokens at every decode step (PEFT reads model_kwargs["past_key_values"], transformers 5
calls it "cache") and returns wrong tokens; the uncached result is asserted equal to greedy
decoding by full recomputation of [P ; source ++ generated]. The prompt is saved as pt_prompt.safetensors: one f32 tensor `prompt` [5, d] with ept's
prompt-checkpoint metadata (docs/FORMAT.md, method pt, ept.max_len 0 = no truncation).

Self-checks (asserted): every model's transformers logits agree with an independent float64
re-implementation of the forward pass (`manual_forward`: RMSNorm, RoPE default / linear / dynamic
/ llama3, GQA / MQA, biases, sliding window, causal mask, tied / untied head) read straight from
config.json (either layout) and the safetensors files; greedy generation is re-derived by full
recomputation and every greedy step has a top-1/top-2 logit margin >= TIE_MARGIN (else the next
seed is drawn); batch loss == one-by-one loss; left-padded batch generation == one-by-one; the
PEFT forward == the manual forward with the prompt rows prepended.
"""

from __future__ import annotations

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import copy
import json
import math
import re
import shutil
import struct
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

import peft
import safetensors
import tokenizers
import transformers
from safetensors.torch import load_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig, Qwen2Config

transformers.utils.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "fixtures" / "data.jsonl"
VOCAB = 384
MAX_NEW_TOKENS = 8
N_LOGIT_EXAMPLES = 2
TIE_MARGIN = 2e-2  # min top1-top2 logit gap at every greedy step (else the next seed is drawn)
MANUAL_TOL = 1e-5  # max |transformers f32 - float64 manual| / max(1, max |logit|)
EMB_STD = 0.5
OUT_GAIN = 3.0
PEFT_VIRTUAL_TOKENS = 5
BYTE_FALLBACK_CHAR = "§"

EXTRA_ENGLISH = [
    "The quick brown fox jumps over the lazy dog while the children watch from the garden.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "A journey of a thousand miles begins with a single step, said the old teacher to her students.",
    "What is the answer to this question? Read the context carefully, then summarize the story.",
    "The summer evening was warm and quiet; the river was slow and the bridge was empty.",
    "Translate the sentence, count the words, and tell me what the painter was carrying near the harbor.",
]

# extra strings for the tokenizer unit tests (byte fallback, emoji, spaces, newline, specials as text)
TOKENIZER_CASES = [
    "hello world",
    "café 🙂",
    "  two  spaces ",
    "line one\nline two",
    "naïve Ünïcödé § ©",
    "question : what is 42 near ?",
    " leading space",
]


# --------------------------------------------------------------------------------------
# json / safetensors helpers (deterministic)
# --------------------------------------------------------------------------------------


def f32(x: float) -> float:
    """float32 value written with its shortest round-trip repr."""
    return float(repr(np.float32(x)).replace("np.float32(", "").rstrip(")"))


def f32list(t: torch.Tensor):
    a = t.detach().to(torch.float32).cpu().numpy()
    if a.ndim == 1:
        return [f32(x) for x in a]
    return [f32list(torch.from_numpy(row)) for row in a]


_NUM_ARRAY = re.compile(r"\[\s*(-?[0-9][-0-9.eE+]*(?:,\s*-?[0-9][-0-9.eE+]*)*)\s*\]")


def dump_json(path: Path, obj, indent=1, sort_keys=False) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False, sort_keys=sort_keys)
    if indent is not None:  # keep arrays of numbers (ids, logit rows) on one line
        text = _NUM_ARRAY.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


def save_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """f32 tensors, sorted names, sorted metadata keys: byte-stable (same writer as prompt_reference.py)."""
    header: "OrderedDict[str, object]" = OrderedDict()
    if metadata:
        header["__metadata__"] = OrderedDict((k, str(metadata[k])) for k in sorted(metadata))
    blobs, offset = [], 0
    for name in sorted(tensors):
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


def load_files_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        if f.name == "pt_prompt.safetensors":
            continue
        part = load_file(str(f))
        assert not set(part) & set(sd), f
        sd.update(part)
    return sd


def load_data() -> list[dict]:
    with open(DATA, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def training_text(data: list[dict]) -> list[str]:
    text = [ex["source"] for ex in data] + [ex["target"] for ex in data] + EXTRA_ENGLISH
    # keep BYTE_FALLBACK_CHAR out of the learned alphabet: it must be spelled with byte tokens
    return [t.replace(" " + BYTE_FALLBACK_CHAR, "").replace(BYTE_FALLBACK_CHAR, "") for t in text]


def build_bytefallback(data: list[dict]) -> Tokenizer:
    corpus = training_text(data)
    specials = ["<unk>", "<s>", "</s>"]
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # train with split=True (pieces never cross word starts, as sentencepiece), use with split=False
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 256, special_tokens=specials, show_progress=False, limit_alphabet=1000
    )
    t.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(t.to_str())["model"]
    vocab: dict[str, int] = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    assert len(vocab) == VOCAB, len(vocab)
    merges = [tuple(m) for m in trained["merges"]]
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    out.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    out.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    out.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    out.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    assert (out.token_to_id("<unk>"), out.token_to_id("<s>"), out.token_to_id("</s>")) == (0, 1, 2)
    assert out.token_to_id("<0x00>") == 3 and out.token_to_id("<0xFF>") == 258
    return out


def build_bytelevel(data: list[dict], style: str) -> Tokenizer:
    corpus = training_text(data)
    if style == "qwen":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        pattern = QWEN2_PATTERN
        normalizer = normalizers.NFC()
    else:
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
        pattern = LLAMA3_PATTERN
        normalizer = None
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    t = Tokenizer(models.BPE())
    if normalizer is not None:
        t.normalizer = normalizer
    t.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(specials), special_tokens=[], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), limit_alphabet=1000,
    )
    t.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(t.to_str())["model"]
    vocab = {p: i for p, i in trained["vocab"].items()}
    assert sorted(vocab.values()) == list(range(len(vocab))) and len(vocab) == VOCAB - len(specials)
    merges = [tuple(m) for m in trained["merges"]]
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, fuse_unk=False))
    if normalizer is not None:
        out.normalizer = normalizer
    out.pre_tokenizer = pre
    out.decoder = decoders.ByteLevel()
    out.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bl = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    if style == "qwen":
        out.post_processor = bl
    else:
        bos = specials[0]
        out.post_processor = processors.Sequence(
            [
                bl,
                processors.TemplateProcessing(
                    single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, VOCAB - 2)]
                ),
            ]
        )
    assert out.get_vocab_size(with_added_tokens=True) == VOCAB
    for i, s in enumerate(specials):
        assert out.token_to_id(s) == VOCAB - len(specials) + i
    return out


TOKENIZER_INFO = {
    # name: (bos, eos, unk, tokenizer_class, bos_added)
    "bytefallback": ("<s>", "</s>", "<unk>", "LlamaTokenizer", True),
    "bytelevel-qwen": (None, "<|endoftext|>", None, "Qwen2Tokenizer", False),
    "bytelevel-llama3": ("<|begin_of_text|>", "<|end_of_text|>", None, "PreTrainedTokenizerFast", True),
}


def write_tokenizer(dst: Path, name: str, tok: Tokenizer) -> None:
    bos, eos, unk, cls, bos_added = TOKENIZER_INFO[name]
    tok.save(str(dst / "tokenizer.json"), pretty=True)
    special = {"eos_token": eos}
    if bos:
        special["bos_token"] = bos
    if unk:
        special["unk_token"] = unk
    if name == "bytelevel-qwen":
        special["pad_token"] = eos
        special["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
    conf = dict(special)
    conf.update(
        {
            "tokenizer_class": cls,
            "model_max_length": 512,
            "clean_up_tokenization_spaces": False,
        }
    )
    if name == "bytefallback":
        conf.update({"add_bos_token": True, "add_eos_token": False, "legacy": False})
    dump_json(dst / "tokenizer_config.json", dict(sorted(conf.items())), indent=2)
    dump_json(dst / "special_tokens_map.json", dict(sorted(special.items())), indent=2)


def check_hf_tokenizer(folder: Path, name: str, raw: Tokenizer, data: list[dict]) -> None:
    """transformers' AutoTokenizer on the folder must give the same ids as the raw tokenizer."""
    bos, eos, unk, _, bos_added = TOKENIZER_INFO[name]
    hf = AutoTokenizer.from_pretrained(str(folder))
    assert len(hf) == VOCAB, len(hf)
    assert hf.eos_token == eos and hf.eos_token_id == raw.token_to_id(eos)
    if bos:
        assert hf.bos_token_id == raw.token_to_id(bos)
    texts = [ex["source"] for ex in data] + [ex["target"] for ex in data] + TOKENIZER_CASES
    for text in texts:
        ids = hf(text).input_ids
        assert ids == raw.encode(text).ids, (name, text, ids)
        assert (ids[:1] == [hf.bos_token_id]) == bos_added, (name, text)
        bare = hf(text, add_special_tokens=False).input_ids
        assert bare == raw.encode(text, add_special_tokens=False).ids
        assert ids == ([hf.bos_token_id] if bos_added else []) + bare
        assert hf.decode(ids, skip_special_tokens=True) == raw.decode(ids, skip_special_tokens=True)
        if text in [ex["source"] for ex in data]:
            assert raw.decode(ids, skip_special_tokens=True) == text, (name, text)


def tokenizer_cases(toks: dict[str, Tokenizer], data: list[dict]) -> dict:
    out = OrderedDict()
    out["description"] = (
        "ids of extra strings under the three fixture tokenizers (tokenizers " + tokenizers.__version__ + "); "
        "`ids` with the post-processor's specials, `ids_no_special` without, `tokens` the pieces, "
        "`decoded` = decode(ids, skip_special_tokens=true). The tokenizer.json files are in the checkpoint "
        "folders named by `folder`."
    )
    folders = {"bytefallback": "llama-gqa", "bytelevel-qwen": "qwen2-bias", "bytelevel-llama3": "llama3-mqa-tied"}
    for name, tok in toks.items():
        cases = []
        for text in TOKENIZER_CASES + [data[4]["source"]]:
            enc = tok.encode(text)
            cases.append(
                OrderedDict(
                    text=text,
                    ids=enc.ids,
                    ids_no_special=tok.encode(text, add_special_tokens=False).ids,
                    tokens=enc.tokens,
                    decoded=tok.decode(enc.ids, skip_special_tokens=True),
                )
            )
        out[name] = OrderedDict(folder=folders[name], cases=cases)
    return out


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------

SPECS = [
    dict(name="llama-gqa", seed=11, model_type="llama", tok="bytefallback", hidden=64, heads=4, kv=2,
         layers=2, inter=96, tie=False, eps=1e-5, eos_gain=2.0,
         rope={"rope_type": "default", "rope_theta": 10000.0}, peft=True),
    dict(name="llama3-mqa-tied", seed=22, model_type="llama", tok="bytelevel-llama3", hidden=32, heads=4, kv=1,
         head_dim=24, layers=1, inter=48, tie=True, attention_bias=True, mlp_bias=True, eos_gain=2.0,
         rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32, "rope_theta": 500000.0}),
    dict(name="mistral-window-sharded", seed=33, model_type="mistral", tok="bytefallback", hidden=32, heads=4,
         kv=2, layers=2, inter=48, tie=False, sliding_window=5, eos_gain=2.0, shard="40KB",
         rope={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    dict(name="qwen2-bias", seed=44, model_type="qwen2", tok="bytelevel-qwen", hidden=32, heads=4, kv=2,
         layers=2, inter=48, tie=True, eos_gain=2.0, rope={"rope_type": "default", "rope_theta": 1000000.0},
         config_patch={"use_sliding_window": False, "sliding_window": 4, "max_window_layers": 1}, peft=True),
    dict(name="llama-bf16", seed=55, model_type="llama", tok="bytefallback", hidden=32, heads=4, kv=4,
         layers=2, inter=48, tie=False, eos_gain=2.0, dtype=torch.bfloat16,
         rope={"rope_type": "default", "rope_theta": 10000.0}),
    dict(name="llama-v4-config", seed=66, model_type="llama", tok="bytefallback", hidden=32, heads=4, kv=2,
         layers=1, inter=48, tie=True, eos_gain=2.0, rope={"rope_type": "linear", "factor": 2.0, "rope_theta": 20000.0},
         v4_layout=True),
]
MAX_POS = 512


def make_config(spec: dict, tok: Tokenizer):
    bos, eos, unk, _, _ = TOKENIZER_INFO[spec["tok"]]
    common = dict(
        vocab_size=VOCAB,
        hidden_size=spec["hidden"],
        intermediate_size=spec["inter"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv"],
        hidden_act="silu",
        max_position_embeddings=MAX_POS,
        initializer_range=0.1,
        rms_norm_eps=spec.get("eps", 1e-6),
        tie_word_embeddings=spec["tie"],
        rope_parameters=dict(spec["rope"]),
        bos_token_id=tok.token_to_id(bos) if bos else None,
        eos_token_id=tok.token_to_id(eos),
        pad_token_id=None,
    )
    if spec["model_type"] == "llama":
        extra = dict(attention_bias=spec.get("attention_bias", False), mlp_bias=spec.get("mlp_bias", False))
        if "head_dim" in spec:
            extra["head_dim"] = spec["head_dim"]
        return LlamaConfig(**common, **extra)
    if spec["model_type"] == "mistral":
        return MistralConfig(**common, sliding_window=spec["sliding_window"])
    if spec["model_type"] == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    raise ValueError(spec["model_type"])


def random_weights(model, seed: int, eos_id: int, eos_gain: float) -> None:
    """Overwrite every parameter with seeded values big enough that nothing is a near-tie:
    embeddings ~ N(0, EMB_STD^2); linear weights ~ N(0, 1/fan_in), times OUT_GAIN for o_proj and
    down_proj (the sublayers dominate the residual stream, so that tied heads do not just repeat
    the last token); biases ~ N(0, 0.5^2);
    RMSNorm weights ~ U(0.5, 1.5) (not all ones, so a missing norm weight is caught);
    untied lm_head ~ N(0, 4/d). The output row of EOS is multiplied by eos_gain so that some
    greedy generations stop early."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):  # tied duplicates are listed once
            shp = tuple(p.shape)
            if n.endswith("norm.weight"):
                t = 0.5 + torch.rand(shp, generator=g)
            elif n.endswith("embed_tokens.weight"):
                t = torch.randn(shp, generator=g) * EMB_STD
            elif n == "lm_head.weight":
                t = torch.randn(shp, generator=g) * 2.0 * shp[1] ** -0.5
            elif n.endswith(".bias"):
                t = torch.randn(shp, generator=g) * 0.5
            else:
                gain = OUT_GAIN if n.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                t = torch.randn(shp, generator=g) * gain * shp[1] ** -0.5
            p.copy_(t)
        head = model.get_output_embeddings().weight
        head[eos_id] *= eos_gain


def write_checkpoint(spec: dict, dst: Path, tok: Tokenizer, seed: int) -> None:
    cfg = make_config(spec, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    random_weights(model, seed, cfg.eos_token_id, spec["eos_gain"])
    if spec["tie"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    dtype = spec.get("dtype", torch.float32)
    model = model.to(dtype)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    kwargs = {"max_shard_size": spec["shard"]} if "shard" in spec else {}
    model.save_pretrained(str(dst), **kwargs)
    conf = json.loads((dst / "config.json").read_text())
    for k, v in spec.get("config_patch", {}).items():
        conf[k] = v
    if spec.get("v4_layout"):
        rp = conf.pop("rope_parameters")
        conf["rope_theta"] = rp.pop("rope_theta")
        conf["rope_scaling"] = {"type": rp.pop("rope_type"), **rp}
        conf["torch_dtype"] = conf.pop("dtype")
        conf["transformers_version"] = "4.46.3"
    dump_json(dst / "config.json", dict(sorted(conf.items())), indent=2)
    write_tokenizer(dst, spec["tok"], tok)


# --------------------------------------------------------------------------------------
# independent float64 forward (the semantics the Rust implementation follows)
# --------------------------------------------------------------------------------------


def rope_settings(conf: dict) -> dict:
    """RoPE settings from config.json, 5.x (`rope_parameters`) or 4.x (`rope_theta` + `rope_scaling`) layout."""
    if conf.get("rope_parameters"):
        rp = dict(conf["rope_parameters"])
    else:
        rp = dict(conf.get("rope_scaling") or {})
        rp.setdefault("rope_theta", conf.get("rope_theta", 10000.0))
    rp["rope_type"] = rp.get("rope_type", rp.get("type", "default"))
    rp.setdefault("rope_theta", conf.get("rope_theta", 10000.0))
    return rp


def head_dim_of(conf: dict) -> int:
    return conf.get("head_dim") or conf["hidden_size"] // conf["num_attention_heads"]


def inv_freq_f32(conf: dict) -> torch.Tensor:
    """inv_freq as transformers holds it: derived in float64 here, rounded to float32
    (transformers evaluates the same formulas in float32; they agree to 1e-6 relative, a few ulp)."""
    rp = rope_settings(conf)
    hd = head_dim_of(conf)
    theta = float(rp["rope_theta"])
    i = torch.arange(0, hd, 2, dtype=torch.float64)
    inv = 1.0 / theta ** (i / hd)
    kind = rp["rope_type"]
    if kind == "default":
        pass
    elif kind == "linear":
        inv = inv / rp["factor"]
    elif kind == "dynamic":
        pass  # == default while positions stay below max_position_embeddings (asserted by the caller)
    elif kind == "llama3":
        f, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        c = rp.get("original_max_position_embeddings", conf["max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        out = []
        for w, v in zip(wavelen.tolist(), inv.tolist()):
            if w < c / hi:
                out.append(v)
            elif w > c / lo:
                out.append(v / f)
            else:
                s = (c / w - lo) / (hi - lo)
                out.append((1 - s) * v / f + s * v)
        inv = torch.tensor(out, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported rope type {kind}")
    return inv.float()


def layer_window(conf: dict, layer: int):
    mt = conf["model_type"]
    if mt == "mistral":
        return conf.get("sliding_window", 4096)  # absent -> 4096; null -> none
    if mt == "qwen2":
        if conf.get("use_sliding_window") and layer >= conf.get("max_window_layers", 28):
            return conf.get("sliding_window")
        return None
    return None


def bias_flags(conf: dict) -> tuple[bool, bool, bool]:
    """(q/k/v bias, o bias, mlp bias)."""
    mt = conf["model_type"]
    if mt == "qwen2":
        return True, False, False
    if mt == "mistral":
        return False, False, False
    ab = bool(conf.get("attention_bias", False))
    return ab, ab, bool(conf.get("mlp_bias", False))


def expected_tensor_names(conf: dict, has_head: bool) -> set[str]:
    qkv_b, o_b, mlp_b = bias_flags(conf)
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if has_head:
        names.add("lm_head.weight")
    for i in range(conf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        for x in "qkvo":
            names.add(p + f"self_attn.{x}_proj.weight")
            if (x != "o" and qkv_b) or (x == "o" and o_b):
                names.add(p + f"self_attn.{x}_proj.bias")
        for x in ("gate", "up", "down"):
            names.add(p + f"mlp.{x}_proj.weight")
            if mlp_b:
                names.add(p + f"mlp.{x}_proj.bias")
    return names


def manual_forward(files: dict, conf: dict, ids: list[int], prefix: torch.Tensor | None = None) -> torch.Tensor:
    """float64 logits [n + len(ids), vocab] for one unpadded sequence [prefix ; embed(ids)]
    (prefix: optional [n, d] rows prepended to the token embeddings, as PEFT prompt tuning does),
    positions 0..n+L-1, computed from the checkpoint tensors as stored and config.json as written."""
    sd = {k: v.to(torch.float64) for k, v in files.items()}
    d = conf["hidden_size"]
    hq = conf["num_attention_heads"]
    hkv = conf.get("num_key_value_heads") or hq
    hd = head_dim_of(conf)
    eps = conf.get("rms_norm_eps", 1e-6)
    qkv_b, o_b, mlp_b = bias_flags(conf)
    emb = sd["model.embed_tokens.weight"]
    head = sd.get("lm_head.weight", emb)  # no lm_head.weight in the files -> tied to the embedding
    x = emb[torch.tensor(ids, dtype=torch.long)]
    if prefix is not None:
        x = torch.cat([prefix.to(torch.float64), x], 0)
    L = x.shape[0]
    rp = rope_settings(conf)
    if rp["rope_type"] == "dynamic":
        assert L <= conf["max_position_embeddings"], "dynamic RoPE beyond max_position_embeddings"
    inv = inv_freq_f32(conf)
    ang = (torch.arange(L, dtype=torch.float32)[:, None] * inv[None, :]).to(torch.float64)  # f32 product
    emb_ang = torch.cat([ang, ang], -1)  # [L, hd]: half-split layout
    cos, sin = emb_ang.cos(), emb_ang.sin()

    def rope(t):  # t [heads, L, hd]
        t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def rms(h, w):
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))

    def lin(h, name, bias):
        y = h @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if bias else y

    qi = torch.arange(L)[:, None]
    kj = torch.arange(L)[None, :]
    for layer in range(conf["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj", qkv_b).view(L, hq, hd).transpose(0, 1)
        k = lin(h, p + "self_attn.k_proj", qkv_b).view(L, hkv, hd).transpose(0, 1)
        v = lin(h, p + "self_attn.v_proj", qkv_b).view(L, hkv, hd).transpose(0, 1)
        q, k = rope(q), rope(k)
        rep = hq // hkv
        k = k[torch.arange(hq) // rep]  # query head h reads kv head h // (Hq/Hkv)
        v = v[torch.arange(hq) // rep]
        s = q @ k.transpose(1, 2) / math.sqrt(hd)
        visible = kj <= qi
        w = layer_window(conf, layer)
        if w is not None:
            visible = visible & (kj > qi - w)
        s = s.masked_fill(~visible, float("-inf"))
        o = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(L, hq * hd)
        x = x + lin(o, p + "self_attn.o_proj", o_b)
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        gate = lin(h, p + "mlp.gate_proj", mlp_b)
        up = lin(h, p + "mlp.up_proj", mlp_b)
        x = x + lin(gate * torch.sigmoid(gate) * up, p + "mlp.down_proj", mlp_b)
    x = rms(x, sd["model.norm.weight"])
    return x @ head.T


# --------------------------------------------------------------------------------------
# reference computation
# --------------------------------------------------------------------------------------


def load_model(folder: Path, dtype=torch.float32):
    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager")
    return m.eval()


def check_loaded(model, folder: Path, conf: dict, spec: dict) -> None:
    """transformers must read the files the way they are meant (config layouts, tie, shards)."""
    files = load_files_state_dict(folder)
    has_head = "lm_head.weight" in files
    assert has_head == (not spec["tie"]), (folder, has_head)
    assert set(files) == expected_tensor_names(conf, has_head), sorted(set(files) ^ expected_tensor_names(conf, has_head))
    msd = model.state_dict()
    for k, v in files.items():
        assert torch.equal(msd[k].float(), v.float()), k
    emb = files["model.embed_tokens.weight"].float()
    if has_head:
        assert torch.equal(model.lm_head.weight.float(), files["lm_head.weight"].float())
        assert not torch.equal(model.lm_head.weight.float(), emb)
    else:
        assert torch.equal(model.lm_head.weight.float(), emb)
    c = model.config
    rp = rope_settings(conf)
    assert c.rope_parameters["rope_type"] == rp["rope_type"] == spec["rope"]["rope_type"], (c.rope_parameters, rp)
    assert float(c.rope_parameters["rope_theta"]) == float(rp["rope_theta"]) == spec["rope"]["rope_theta"]
    for k, v in spec["rope"].items():
        assert c.rope_parameters[k] == v, (k, c.rope_parameters[k], v)
    assert (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads) == head_dim_of(conf)
    assert c.num_key_value_heads == spec["kv"]
    if spec["model_type"] == "qwen2":
        assert c.sliding_window is None and set(c.layer_types) == {"full_attention"}, (c.sliding_window, c.layer_types)
    if spec["model_type"] == "mistral":
        assert c.sliding_window == spec["sliding_window"]
    inv = model.model.rotary_emb.inv_freq.float()
    want = inv_freq_f32(conf)
    assert torch.allclose(inv, want, rtol=1e-6, atol=0), (inv, want)  # transformers: f32 pow, a few ulp
    if spec.get("shard"):
        idx = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(set(idx["weight_map"].values()))
        assert len(shards) >= 2 and set(idx["weight_map"]) == set(files), shards
    if spec.get("v4_layout"):
        assert "rope_parameters" not in conf and "dtype" not in conf and "torch_dtype" in conf
    else:
        assert "rope_parameters" in conf and "rope_scaling" not in conf and "rope_theta" not in conf
        assert "dtype" in conf and "torch_dtype" not in conf


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def greedy_recompute(model, embed_prefix: torch.Tensor | None, ids: list[int], eos: int) -> tuple[list[int], float]:
    """Greedy decoding by full recomputation (no cache, positions 0..): (new tokens, min top1-top2 margin)."""
    seq = list(ids)
    out, margin = [], float("inf")
    for _ in range(MAX_NEW_TOKENS):
        x = model.get_input_embeddings()(torch.tensor([seq]))
        if embed_prefix is not None:
            x = torch.cat([embed_prefix[None].to(x.dtype), x], 1)
        logits = model(inputs_embeds=x).logits[0, -1]
        top = torch.topk(logits, 2)
        margin = min(margin, float(top.values[0] - top.values[1]))
        nxt = int(top.indices[0])
        out.append(nxt)
        seq.append(nxt)
        if nxt == eos:
            break
    return out, margin


def cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def generate(model, ids: torch.Tensor, mask: torch.Tensor, eos: int) -> torch.Tensor:
    return model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=eos, pad_token_id=eos,
    )


@torch.no_grad()
def batch_loss(model, seqs: list[list[int]], n_src: list[int], pad: int) -> tuple[float, int]:
    """transformers' loss on ONE right-padded batch: mask 0 on padding, labels -100 except targets."""
    B, T = len(seqs), max(map(len, seqs))
    ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for i, (s, k) in enumerate(zip(seqs, n_src)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, k : len(s)] = torch.tensor(s[k:])
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    # own reduction from the logits, as a check of transformers' shift / ignore / mean
    nll = token_nll(out.logits[:, :-1], labels[:, 1:].clamp_min(0))
    valid = labels[:, 1:] != -100
    own = float(nll[valid].sum() / valid.sum())
    assert abs(own - float(out.loss)) < 1e-5 * own, (own, float(out.loss))
    return float(out.loss), int(valid.sum())


@torch.no_grad()
def batch_generate(model, srcs: list[list[int]], pad: int, eos: int) -> list[list[int]]:
    B, S = len(srcs), max(map(len, srcs))
    ids = torch.full((B, S), pad, dtype=torch.long)
    mask = torch.zeros((B, S), dtype=torch.long)
    for i, s in enumerate(srcs):  # LEFT padding
        ids[i, S - len(s) :] = torch.tensor(s)
        mask[i, S - len(s) :] = 1
    out = generate(model, ids, mask, eos)
    return [cut_at_eos(row[S:].tolist(), eos) for row in out]


@torch.no_grad()
def peft_reference(model, folder: Path, conf: dict, files: dict, tok_ids: list[tuple[list[int], list[int]]], eos: int,
                   seed: int, name: str) -> tuple[dict, float, float, bool]:
    from peft import PromptTuningConfig, get_peft_model

    d = conf["hidden_size"]
    base = copy.deepcopy(model)
    pcfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PEFT_VIRTUAL_TOKENS, prompt_tuning_init="RANDOM")
    pm = get_peft_model(base, pcfg)
    pm.eval()
    g = torch.Generator().manual_seed(seed + 7)
    prompt = (torch.randn(PEFT_VIRTUAL_TOKENS, d, generator=g) * EMB_STD).float()
    pm.prompt_encoder["default"].embedding.weight.copy_(prompt)
    meta = {
        "ept.format": "1",
        "ept.method": "pt",
        "ept.materialized": "false",
        "ept.fusion": "off",
        "ept.multi_space": "false",
        "ept.lora_scaling": "1.0",
        "ept.max_len": "0",
        "ept.d_model": str(d),
        "ept.model": f"tests/fixtures/llama/{name}",
        "ept.s": str(PEFT_VIRTUAL_TOKENS),
        "ept.l": str(PEFT_VIRTUAL_TOKENS),
        "ept.r": "0",
        "ept.num_experts": "0",
    }
    save_safetensors(folder / "pt_prompt.safetensors", {"prompt": prompt}, meta)
    per_ex, gens = [], []
    max_err, margin = 0.0, float("inf")
    n_tot = 0
    cached_ok = True
    for src, lab in tok_ids:
        seq = src + lab
        x = torch.tensor([seq])
        labels = torch.tensor([[-100] * len(src) + lab])
        out = pm(input_ids=x, attention_mask=torch.ones_like(x), labels=labels)
        n = PEFT_VIRTUAL_TOKENS
        assert out.logits.shape[1] == n + len(seq)
        rows = out.logits[0, n + len(src) - 1 : n + len(seq) - 1]
        s = float(token_nll(rows, torch.tensor(lab)).sum())
        assert abs(float(out.loss) * len(lab) - s) < 1e-5 * s, (float(out.loss) * len(lab), s)
        man = manual_forward(files, conf, seq, prefix=prompt)
        err = float((man - out.logits[0].double()).abs().max()) / max(1.0, float(man.abs().max()))
        assert err < MANUAL_TOL, ("peft manual", name, err)
        max_err = max(max_err, err)
        per_ex.append(s)
        n_tot += len(lab)
        # use_cache=False: with peft 0.21.2 + transformers 5.25 the cached path re-prepends the virtual tokens
        # at every decode step (PEFT looks for model_kwargs["past_key_values"], transformers 5 names it "cache"),
        # so cached generation is wrong; without the cache PEFT re-embeds [P ; source ++ generated] each step.
        kw = dict(input_ids=torch.tensor([src]), attention_mask=torch.ones(1, len(src), dtype=torch.long),
                  do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=eos)
        gen = pm.generate(**kw, use_cache=False)[0].tolist()
        assert gen[: len(src)] == src, "peft generate returns the input ids first"
        gen = gen[len(src) :]
        again, mg = greedy_recompute(model, prompt, src, eos)
        assert gen == again, (name, gen, again)
        cached_ok = cached_ok and pm.generate(**kw, use_cache=True)[0].tolist()[len(src) :] == gen
        margin = min(margin, mg)
        gens.append(gen)
    ref = OrderedDict(
        num_virtual_tokens=PEFT_VIRTUAL_TOKENS,
        prompt_file="pt_prompt.safetensors",
        per_example_loss_sum=per_ex,
        mean_loss=sum(per_ex) / n_tot,
        generated_ids=gens,
    )
    return ref, max_err, margin, cached_ok


@torch.no_grad()
def compute_reference(spec: dict, folder: Path, data: list[dict], raw_tok: Tokenizer, seed: int):
    name = spec["name"]
    conf = json.loads((folder / "config.json").read_text())
    model = load_model(folder, torch.float32)
    check_loaded(model, folder, conf, spec)
    files = load_files_state_dict(folder)
    bos, eos_tok, _, _, bos_added = TOKENIZER_INFO[spec["tok"]]
    eos = raw_tok.token_to_id(eos_tok)
    hf_tok = AutoTokenizer.from_pretrained(str(folder))
    examples, tok_ids = [], []
    tot, n_tot = 0.0, 0
    max_err, margin = 0.0, float("inf")
    eos_stops = 0
    for i, ex in enumerate(data):
        src = hf_tok(ex["source"]).input_ids
        lab = hf_tok(ex["target"], add_special_tokens=False).input_ids + [eos]
        assert src == raw_tok.encode(ex["source"]).ids
        assert (src[0] == raw_tok.token_to_id(bos)) if bos_added else (eos not in src)
        seq = src + lab
        assert len(seq) <= MAX_POS
        x = torch.tensor([seq])
        labels = torch.tensor([[-100] * len(src) + lab])
        out = model(input_ids=x, labels=labels)
        rows = out.logits[0, len(src) - 1 : len(seq) - 1]
        loss_sum = float(token_nll(rows, torch.tensor(lab)).sum())
        assert abs(float(out.loss) * len(lab) - loss_sum) < 1e-5 * loss_sum
        man = manual_forward(files, conf, seq)
        err = float((man - out.logits[0].double()).abs().max()) / max(1.0, float(man.abs().max()))
        assert err < MANUAL_TOL, (name, i, err)
        max_err = max(max_err, err)
        gen = generate(model, torch.tensor([src]), torch.ones(1, len(src), dtype=torch.long), eos)[0].tolist()
        assert gen[: len(src)] == src
        gen = gen[len(src) :]
        again, mg = greedy_recompute(model, None, src, eos)
        assert gen == again, (name, i, gen, again)
        margin = min(margin, mg)
        eos_stops += int(gen[-1] == eos)
        examples.append(
            OrderedDict(
                source=ex["source"],
                target=ex["target"],
                input_ids=src,
                label_ids=lab,
                loss_sum=loss_sum,
                n_tokens=len(lab),
                logits=f32list(rows) if i < N_LOGIT_EXAMPLES else None,
                generated_ids=gen,
            )
        )
        tok_ids.append((src, lab))
        tot += loss_sum
        n_tot += len(lab)
    mean_loss = tot / n_tot
    bl, bn = batch_loss(model, [s + l for s, l in tok_ids], [len(s) for s, _ in tok_ids], eos)
    assert bn == n_tot and abs(bl - mean_loss) < 1e-5 * mean_loss, (bl, mean_loss)
    bgen = batch_generate(model, [s for s, _ in tok_ids], eos, eos)
    same = bgen == [e["generated_ids"] for e in examples]
    checks = OrderedDict(
        manual_forward_max_rel_err=max_err, min_greedy_margin=margin, eos_stops=eos_stops,
        batch_generate_equals_single=same, batch_minus_single_loss=bl - mean_loss,
    )
    ok = same and margin >= TIE_MARGIN and 1 <= eos_stops <= len(data) - 1
    ref = OrderedDict(
        model_type=conf["model_type"],
        bos_added=bos_added,
        eos_token_id=eos,
        examples=examples,
        mean_loss=mean_loss,
        batch_mean_loss=bl,
        batch_generated_ids=bgen,
    )
    if spec.get("dtype") == torch.bfloat16:
        mb = load_model(folder, torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in mb.parameters())
        s, n = 0.0, 0
        for src, lab in tok_ids:
            lg = mb(input_ids=torch.tensor([src + lab])).logits[0, len(src) - 1 : len(src) + len(lab) - 1]
            s += float(token_nll(lg, torch.tensor(lab)).sum())
            n += len(lab)
        ref["bf16"] = OrderedDict(mean_loss=s / n)
        checks["bf16_inv_freq_dtype"] = str(mb.model.rotary_emb.inv_freq.dtype)
        checks["bf16_minus_f32_mean_loss"] = s / n - mean_loss
    if spec.get("peft"):
        pref, perr, pmargin, cached_ok = peft_reference(model, folder, conf, files, tok_ids, eos, seed, name)
        ref["peft_pt"] = pref
        checks["peft_manual_forward_max_rel_err"] = perr
        checks["peft_min_greedy_margin"] = pmargin
        checks["peft_cached_generate_equals_uncached"] = cached_ok
        ok = ok and pmargin >= TIE_MARGIN
    return (ref if ok else None), checks


def describe(spec: dict, conf: dict) -> dict:
    keep = ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "attention_bias", "mlp_bias",
            "sliding_window", "use_sliding_window", "max_window_layers", "max_position_embeddings",
            "rope_parameters", "rope_theta", "rope_scaling", "dtype", "torch_dtype", "bos_token_id", "eos_token_id"]
    return OrderedDict((k, conf[k]) for k in keep if k in conf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "llama"), type=Path)
    ap.add_argument("--only", nargs="*", default=None, help="subset of checkpoint names")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = load_data()

    toks = {
        "bytefallback": build_bytefallback(data),
        "bytelevel-qwen": build_bytelevel(data, "qwen"),
        "bytelevel-llama3": build_bytelevel(data, "llama3"),
    }
    # byte fallback really happens on the data: '§' is spelled with its two UTF-8 bytes
    pieces = toks["bytefallback"].encode(data[4]["source"]).tokens
    assert "<0xC2>" in pieces and "<0xA7>" in pieces, pieces
    dump_json(out / "tokenizer_cases.json", tokenizer_cases(toks, data), indent=1)

    manifest = OrderedDict()
    manifest["versions"] = OrderedDict(
        torch=torch.__version__.split("+")[0], transformers=transformers.__version__, peft=peft.__version__,
        tokenizers=tokenizers.__version__, safetensors=safetensors.__version__, numpy=np.__version__,
    )
    manifest["tie_margin"] = TIE_MARGIN
    manifest["manual_tol"] = MANUAL_TOL
    manifest["notes"] = [
        "loss_sum / per_example_loss_sum: float64 sum of -log_softmax of transformers' f32 logits at the scored rows",
        "batch_mean_loss: transformers' own loss (token mean) on one right-padded batch, pad id = eos, labels -100 "
        "on source and padding",
        "batch_generated_ids: generate() on one left-padded batch (pad = eos, attention_mask 0 on padding), cut "
        "after the first eos",
        "bf16.mean_loss: AutoModelForCausalLM.from_pretrained(dtype=torch.bfloat16) (every weight and activation "
        "bf16; RMSNorm and softmax upcast to f32 inside transformers; RoPE inv_freq buffer dtype given in checks), "
        "CE in float64 from the bf16 logits",
        "llama3-mqa-tied uses original_max_position_embeddings 32 (not 16) so that its 12 RoPE bands hit all three "
        "llama3 branches (1 kept, 1 smoothed, 10 divided by factor)",
        "safetensors checkpoints written by transformers' save_pretrained (5.x always writes safetensors; it has no "
        "safe_serialization argument any more)",
        "peft_pt.generated_ids: peft_model.generate(..., use_cache=False). With peft 0.21.2 + transformers 5.25 the "
        "cached path re-prepends the virtual tokens at every decode step (PEFT's prepare_inputs_for_generation reads "
        "model_kwargs['past_key_values'], transformers 5 passes the cache as 'cache'), which yields different, wrong "
        "tokens (checks.peft_cached_generate_equals_uncached); the uncached result equals greedy decoding by full "
        "recomputation of [P ; source ++ generated]",
        "tokenizer_config.json tokenizer_class: LlamaTokenizer (bytefallback), Qwen2Tokenizer (bytelevel-qwen), "
        "PreTrainedTokenizerFast (bytelevel-llama3); AutoTokenizer on each folder was checked to give the ids of "
        "tokenizer.json through the `tokenizers` library",
    ]
    manifest["checkpoints"] = OrderedDict()
    specs = SPECS if not args.only else [s for s in SPECS if s["name"] in args.only]
    for spec in specs:
        folder = out / spec["name"]
        raw = toks[spec["tok"]]
        for attempt in range(60):
            seed = spec["seed"] + 1000 * attempt
            write_checkpoint(spec, folder, raw, seed)
            check_hf_tokenizer(folder, spec["tok"], raw, data)
            ref, checks = compute_reference(spec, folder, data, raw, seed)
            if ref is not None:
                break
            print(f"  {spec['name']} seed {seed} rejected: {dict(checks)}", file=sys.stderr)
        else:
            raise SystemExit(f"{spec['name']}: no acceptable seed")
        dump_json(folder / "reference.json", ref, indent=1)
        conf = json.loads((folder / "config.json").read_text())
        files = sorted(p.name for p in folder.iterdir())
        for p in folder.iterdir():
            p.chmod(0o644)
        size = sum(p.stat().st_size for p in folder.iterdir())
        manifest["checkpoints"][spec["name"]] = OrderedDict(
            seed=seed, tokenizer=spec["tok"], eos_gain=spec["eos_gain"], files=files, config=describe(spec, conf),
            checks=checks, bytes=size,
        )
        print(
            f"{spec['name']:24s} seed={seed:5d} mean={ref['mean_loss']:.6f} batch={ref['batch_mean_loss']:.6f} "
            f"err={checks['manual_forward_max_rel_err']:.2e} margin={checks['min_greedy_margin']:.3f} "
            f"eos_stops={checks['eos_stops']} size={size / 1024:.0f}KiB",
            file=sys.stderr,
        )
    if not args.only:
        dump_json(out / "manifest.json", manifest, indent=1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"tokenizers {tokenizers.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
