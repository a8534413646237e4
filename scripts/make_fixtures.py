#!/usr/bin/env python3
"""Generate the T5 reference fixtures used by ept's Rust tests.

Usage (from the repository root):

    python scripts/make_fixtures.py --out tests/fixtures

Everything is seeded and the output is byte-identical across runs on the same
library versions (CPU only).  Writes

    <out>/tokenizer.json            small T5-like Unigram tokenizer (trained here)
    <out>/data.jsonl                6 {"source", "target"} examples
    <out>/relative_buckets.json     transformers' T5 relative-position bucket tables
    <out>/t5/<name>/...             tiny random T5 checkpoints + reference.json

The reference numbers come from transformers (f32, eval mode, eager attention),
and every model is additionally cross-checked against an independent float64
re-implementation of the T5 forward pass (`manual_forward` below), so the
fixtures also document what the files mean.

Requirements: torch, transformers (>= 5), tokenizers, safetensors, numpy.
"""

from __future__ import annotations

import os

# Deterministic Unigram training: no thread-count dependent reductions.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import math
import random
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

import tokenizers
import transformers
from safetensors.torch import save_file, load_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

transformers.utils.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

torch.set_num_threads(1)  # reproducible reductions
torch.use_deterministic_algorithms(True)

SPECIALS = ["<pad>", "</s>", "<unk>"]
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
N_EXTRA_IDS = 10
TRAINED_VOCAB = 250  # pieces from the Unigram trainer, the 3 specials included
UNK_CHAR = "§"  # never in the training corpus -> <unk>
MAX_NEW_TOKENS = 12
MAX_TARGET_TOKENS = 6  # label ids incl. </s>
N_LOGIT_EXAMPLES = 2
OUT_GAIN = float(os.environ.get("OUT_GAIN", "3.0"))  # sublayer outputs dominate the embedding -> varied greedy output
TIE_MARGIN = 1e-2  # min top1-top2 logit gap required at every greedy step (else the next seed is tried)

# --------------------------------------------------------------------------------------
# synthetic language
# --------------------------------------------------------------------------------------

DET = ["the", "a", "this", "that", "every", "some", "my", "our", "your", "their", "his", "her"]
ADJ = ["big", "small", "red", "blue", "green", "old", "young", "happy", "quiet", "bright",
       "dark", "warm", "cold", "fast", "slow", "tall", "gentle", "brave", "clever", "strange",
       "yellow", "purple", "golden", "silver", "wooden", "heavy", "light", "sleepy", "hungry", "noisy",
       "careful", "lonely", "friendly", "ancient", "modern", "narrow", "wide", "sweet", "bitter", "curious"]
NOUN = ["dog", "cat", "bird", "house", "river", "tree", "child", "teacher", "farmer", "city",
        "garden", "road", "boat", "apple", "book", "song", "king", "queen", "horse", "mountain",
        "window", "table", "letter", "market", "village", "friend", "stone", "flower", "island", "story",
        "bridge", "forest", "kitchen", "doctor", "sailor", "painter", "baker", "soldier", "student", "engine",
        "candle", "mirror", "basket", "pocket", "ladder", "blanket", "castle", "harbor", "meadow", "valley",
        "winter", "summer", "morning", "evening", "journey", "machine", "picture", "question", "answer", "cloud"]
VERB_T = ["see", "like", "find", "carry", "paint", "watch", "follow", "build", "read", "open",
          "hold", "want", "keep", "remember", "visit", "answer", "clean", "cover", "push", "pull",
          "help", "call", "touch", "borrow", "explain", "discover", "protect", "deliver"]
VERB_I = ["run", "sleep", "wait", "laugh", "fall", "grow", "shine", "walk", "swim", "sing", "rest",
          "travel", "dance", "wander", "listen", "whisper", "jump", "climb", "smile", "shout"]
PREP = ["near", "under", "behind", "over", "across", "beside", "inside", "toward", "with", "from",
        "between", "around", "through", "after", "before", "without"]
ADV = ["quickly", "slowly", "often", "never", "always", "today", "again", "soon", "together", "quietly",
       "happily", "suddenly", "carefully", "yesterday", "tomorrow", "finally"]
CONJ = ["and", "but", "because", "while", "when", "although", "until"]
NAMES = ["Anna", "Boris", "Clara", "Daniel", "Elena", "Felix", "Greta", "Hugo", "Ivan", "Julia", "Karl", "Lena"]
NUMS = ["one", "two", "three", "four", "five", "six", "seven"]


def _plural(n: str) -> str:
    if n.endswith("y") and n[-2] not in "aeiou":
        return n[:-1] + "ies"
    if n.endswith(("s", "sh", "ch")):
        return n + "es"
    return n + "s"


def _verb(v: str, form: str) -> str:
    if form == "s":
        return _plural(v)
    if form == "ed":
        if v.endswith("e"):
            return v + "d"
        if v.endswith("y") and v[-2] not in "aeiou":
            return v[:-1] + "ied"
        return v + "ed"
    if form == "ing":
        if v.endswith("e") and not v.endswith("ee"):
            return v[:-1] + "ing"
        return v + "ing"
    return v


class Language:
    """Seeded generator of an English-like toy language."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def np(self) -> tuple[list[str], str]:
        r = self.r
        if r.random() < 0.15:
            name = r.choice(NAMES)
            return [name], name
        words = [r.choice(DET)]
        if r.random() < 0.6:
            words.append(r.choice(ADJ))
        noun = r.choice(NOUN)
        if r.random() < 0.25:
            words[0] = r.choice(["the", "some", "two", "three", "many"])
            noun = _plural(noun)
        words.append(noun)
        return words, noun

    def clause(self) -> tuple[list[str], list[str]]:
        r = self.r
        subj, n1 = self.np()
        form = r.choice(["s", "s", "ed", "ing"])
        nouns = [n1]
        if form == "ing":
            aux = ["is"] if r.random() < 0.5 else ["was"]
        else:
            aux = []
        if r.random() < 0.55:
            obj, n2 = self.np()
            words = subj + aux + [_verb(r.choice(VERB_T), form)] + obj
            nouns.append(n2)
        else:
            words = subj + aux + [_verb(r.choice(VERB_I), form)]
        if r.random() < 0.5:
            pp, n3 = self.np()
            words += [r.choice(PREP)] + pp
            nouns.append(n3)
        if r.random() < 0.4:
            words.append(r.choice(ADV))
        return words, nouns

    def sentence(self) -> tuple[str, list[str]]:
        words, nouns = self.clause()
        if self.r.random() < 0.3:
            w2, n2 = self.clause()
            words += [self.r.choice(CONJ)] + w2
            nouns += n2
        if self.r.random() < 0.15:
            words = [self.r.choice(NUMS)] + [w for w in words]
        return " ".join(words) + " " + self.r.choice([".", ".", ".", "!", "?"]), nouns

    def corpus(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            k = self.r.choice([1, 1, 2, 3])
            out.append(" ".join(self.sentence()[0] for _ in range(k)))
        # make sure task prefixes and every base word are seen
        out.append("summarize : question : context : translate : answer : count : " + " ".join(NUMS))
        out.append(" ".join(DET + ADJ + NOUN + VERB_T + VERB_I + PREP + ADV + CONJ + NAMES))
        return out


def make_examples(seed: int, tok: Tokenizer | None = None) -> list[dict]:
    """Six source/target pairs of varied length; two sources are > 40 tokens."""
    lang = Language(seed)
    plans = [
        ("summarize", 1),
        ("question", 2),
        ("summarize", 6),
        ("question", 7),
        ("translate", 1),  # carries the <unk> character
        ("count", 3),
    ]
    exs = []
    for i, (task, n_sent) in enumerate(plans):
        sents, nouns = [], []
        for _ in range(n_sent):
            s, ns = lang.sentence()
            sents.append(s)
            nouns += ns
        text = " ".join(sents)
        if task == "summarize":
            source = "summarize : " + text
            target = " ".join(nouns[: 1 + i % 3])
        elif task == "question":
            source = "question : what is " + nouns[-1] + " near ? context : " + text
            target = "the " + nouns[0] + " " + lang.r.choice(ADV)
        elif task == "translate":
            words = text.split(" ")
            words.insert(2, UNK_CHAR)
            source = "translate : " + " ".join(words)
            target = nouns[0]
        else:
            source = "count : " + text
            target = NUMS[len(nouns) % len(NUMS)] + " " + nouns[0]
        if tok is not None:  # targets: at most MAX_TARGET_TOKENS ids including </s>
            words = target.split(" ")
            while len(words) > 1 and len(tok.encode(" ".join(words)).ids) > MAX_TARGET_TOKENS:
                words.pop()
            target = " ".join(words)
            assert len(tok.encode(target).ids) <= MAX_TARGET_TOKENS, target
        exs.append({"source": source, "target": target})
    return exs


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------


def _components():
    # T5's tokenizer.json: normalizer Precompiled (an NFKC-like SentencePiece charsmap) — here plain NFKC;
    # pre-tokenizer WhitespaceSplit + Metaspace("▁", prepend always, split); decoder Metaspace.
    normalizer = normalizers.NFKC()
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    dec = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return normalizer, pre, dec


def build_tokenizer(corpus: list[str]) -> Tokenizer:
    normalizer, pre, dec = _components()
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    trainer = trainers.UnigramTrainer(
        vocab_size=TRAINED_VOCAB,
        special_tokens=SPECIALS,
        unk_token="<unk>",
        show_progress=False,
        shrinking_factor=0.75,
        max_piece_length=10,
        n_sub_iterations=2,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    assert [p for p, _ in vocab[:3]] == SPECIALS, vocab[:3]
    # The trainer's scores vary in the last bits between runs (hash-map iteration order), and the
    # characters it appends with near-equal scores come out in run-dependent order: round the scores
    # to 2 decimals and sort (score desc, piece) so that tokenizer.json is byte-identical across runs.
    pieces = [(p, 0.0) for p, _ in vocab[:3]]
    pieces += sorted(((p, round(float(s), 2)) for p, s in vocab[3:]), key=lambda ps: (-ps[1], ps[0]))
    # T5 layout: <pad> <unk> </s> first, sentinels appended at the END of the model vocab in reverse
    # order (transformers' T5Converter: <extra_id_{N-1}> ... <extra_id_0>, so <extra_id_0> has the largest id).
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(N_EXTRA_IDS - 1, -1, -1)]
    out = Tokenizer(models.Unigram(pieces, unk_id=UNK_ID, byte_fallback=False))
    out.normalizer = normalizer
    out.pre_tokenizer = pre
    out.decoder = dec
    out.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIALS]
        + [AddedToken(f"<extra_id_{i}>", special=True, normalized=False) for i in range(N_EXTRA_IDS - 1, -1, -1)]
    )
    out.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
    )
    assert out.token_to_id("<pad>") == PAD_ID and out.token_to_id("</s>") == EOS_ID
    assert out.token_to_id("<unk>") == UNK_ID
    assert out.token_to_id("<extra_id_0>") == out.get_vocab_size() - 1
    return out


def tokenizer_config() -> dict:
    extras = [f"<extra_id_{i}>" for i in range(N_EXTRA_IDS)]
    return {
        "tokenizer_class": "T5Tokenizer",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "extra_ids": N_EXTRA_IDS,
        "additional_special_tokens": extras,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
    }


def special_tokens_map() -> dict:
    return {
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(N_EXTRA_IDS)],
    }


def write_tokenizer_files(dst: Path, tokenizer_json: Path) -> None:
    shutil.copyfile(tokenizer_json, dst / "tokenizer.json")
    dump_json(dst / "tokenizer_config.json", tokenizer_config())
    dump_json(dst / "special_tokens_map.json", special_tokens_map())


def load_hf_tokenizer(folder: Path):
    """transformers' view of the tokenizer; checked against the raw `tokenizers` one."""
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    return tok


def check_transformers_tokenizer(folder: Path, raw_tok: Tokenizer, examples: list[dict]) -> None:
    """The checkpoint folder must load as a T5 tokenizer in transformers and agree with `tokenizers`."""
    from transformers import AutoTokenizer, T5TokenizerFast

    for tok in (AutoTokenizer.from_pretrained(str(folder)), T5TokenizerFast.from_pretrained(str(folder))):
        assert len(tok) == raw_tok.get_vocab_size(), (type(tok), len(tok))
        assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (PAD_ID, EOS_ID, UNK_ID)
        for ex in examples:
            for text in (ex["source"], ex["target"]):
                ids = tok(text).input_ids
                assert ids == raw_tok.encode(text).ids, (type(tok), text, ids)
                assert tok.decode(ids, skip_special_tokens=True) == raw_tok.decode(ids, skip_special_tokens=True)


# --------------------------------------------------------------------------------------
# json helpers (deterministic, float32 values written with their shortest round-trip repr)
# --------------------------------------------------------------------------------------


def f32list(t: torch.Tensor):
    a = t.detach().to(torch.float32).cpu().numpy()
    if a.ndim == 1:
        return [float(repr(np.float32(x)).replace("np.float32(", "").rstrip(")")) for x in a]
    return [f32list(torch.from_numpy(row)) for row in a]


_NUM_ARRAY = re.compile(r"\[\s*(-?[0-9][-0-9.eE+]*(?:,\s*-?[0-9][-0-9.eE+]*)*)\s*\]")


def dump_json(path: Path, obj, indent=2) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    if indent is not None:  # keep arrays of numbers (ids, logit rows) on one line
        text = _NUM_ARRAY.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


def make_config(spec: dict, vocab_size: int) -> T5Config:
    return T5Config(
        vocab_size=vocab_size,
        d_model=spec["d_model"],
        d_kv=spec["d_kv"],
        num_heads=spec["num_heads"],
        d_ff=spec["d_ff"],
        num_layers=spec["num_layers"],
        num_decoder_layers=spec["num_decoder_layers"],
        relative_attention_num_buckets=spec["buckets"],
        relative_attention_max_distance=spec["max_distance"],
        feed_forward_proj=spec["ff"],
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        decoder_start_token_id=PAD_ID,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
    )


def random_weights(cfg: T5Config, seed: int, untied: bool) -> dict[str, torch.Tensor]:
    """A full, canonical state dict (f32) with weights large enough that nothing is a near-tie:
    embeddings ~ N(0,1); linear W ~ N(0, 1/fan_in) (so q.k scores are O(sqrt(d_kv)));
    relative bias ~ N(0,1); layer-norm weights ~ U(0.5, 1.5) (not all ones, so a missing
    norm weight is caught); untied lm_head ~ N(0, 4/d_model)."""
    g = torch.Generator().manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    names = [n for n, _ in model.named_parameters()]  # tied duplicates are listed once
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    sd = {}
    for n in names:
        shp = shapes[n]
        if n.endswith("layer_norm.weight"):
            t = 0.5 + torch.rand(shp, generator=g)
        elif n.endswith("relative_attention_bias.weight"):
            t = torch.randn(shp, generator=g)
        elif n == "shared.weight":
            t = torch.randn(shp, generator=g)
        elif n == "lm_head.weight":
            continue
        else:
            gain = OUT_GAIN if n.endswith((".o.weight", ".wo.weight")) else 1.0
            t = torch.randn(shp, generator=g) * gain * shp[1] ** -0.5
        sd[n] = t.contiguous()
    if untied:
        sd["lm_head.weight"] = (torch.randn(cfg.vocab_size, cfg.d_model, generator=g) * 2.0 * cfg.d_model**-0.5).contiguous()
    return sd


def config_json(cfg: T5Config) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)
        return json.loads(Path(d, "config.json").read_text())


def write_checkpoint(
    dst: Path,
    cfg: T5Config,
    sd: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    embed_name: str = "shared.weight",
    shards: int = 1,
    config_patch: dict | None = None,
    drop_keys: tuple[str, ...] = (),
) -> dict:
    """Write config.json, generation_config.json and safetensors the way the *files* are meant.

    `sd` is the canonical state dict (shared.weight, blocks, optional lm_head.weight).
    `embed_name` renames shared.weight (e.g. to encoder.embed_tokens.weight).
    Returns the config dict written."""
    dst.mkdir(parents=True, exist_ok=True)
    conf = config_json(cfg)
    conf["dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    for k in drop_keys:
        conf.pop(k, None)
    for k, v in (config_patch or {}).items():
        if v is None:
            conf.pop(k, None)
        else:
            conf[k] = v
    conf = dict(sorted(conf.items()))
    dump_json(dst / "config.json", conf)
    dump_json(
        dst / "generation_config.json",
        {"decoder_start_token_id": PAD_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID},
    )
    tensors = {}
    for k, v in sd.items():
        name = embed_name if k == "shared.weight" else k
        tensors[name] = v.to(dtype).contiguous()
    tensors = dict(sorted(tensors.items()))
    meta = {"format": "pt"}
    if shards == 1:
        save_file(tensors, str(dst / "model.safetensors"), metadata=meta)
    else:
        names = list(tensors)
        enc = [n for n in names if n.startswith("encoder.") or n == "shared.weight"]
        rest = [n for n in names if n not in enc]
        groups = [enc, rest]
        assert shards == 2 and all(groups)
        weight_map = {}
        total = 0
        for i, grp in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in grp}, str(dst / fname), metadata=meta)
            for n in grp:
                weight_map[n] = fname
                total += tensors[n].numel() * tensors[n].element_size()
        n_params = sum(t.numel() for t in tensors.values())
        dump_json(
            dst / "model.safetensors.index.json",
            {"metadata": {"total_parameters": n_params, "total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
    return conf


def expected_semantics(conf: dict, files: dict[str, torch.Tensor]) -> tuple[bool, bool]:
    """(scale_decoder_outputs, separate_head) as transformers>=5 reads a T5 checkpoint:
    scale = conf["scale_decoder_outputs"] if present else (tie_word_embeddings is not False);
    the head is the checkpoint's lm_head.weight whenever that key is present (and differs from the
    embedding: transformers 5 then refuses to tie, whatever tie_word_embeddings says), else the
    shared embedding."""
    tie = conf.get("tie_word_embeddings", True)
    scale = conf.get("scale_decoder_outputs", tie is not False)
    return bool(scale), "lm_head.weight" in files


# --------------------------------------------------------------------------------------
# independent float64 T5 forward (the spec the Rust implementation follows)
# --------------------------------------------------------------------------------------


def relative_position_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bit-exact copy of transformers' T5Attention._relative_position_bucket (float32 log!)."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).to(torch.long) * num_buckets
        rel = torch.abs(rel)
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (
        torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rel, large)


def manual_forward(files_sd: dict, conf: dict, input_ids: list[int], decoder_input_ids: list[int]) -> torch.Tensor:
    """float64 logits [len(decoder_input_ids), vocab] computed from the checkpoint tensors as stored."""
    sd = {k: v.to(torch.float64) for k, v in files_sd.items()}
    emb = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    scale, untied = expected_semantics(conf, files_sd)
    head = sd["lm_head.weight"] if untied else emb
    H, dk, D = conf["num_heads"], conf["d_kv"], conf["d_model"]
    eps = conf.get("layer_norm_epsilon", 1e-6)
    ff = conf.get("feed_forward_proj", "relu")
    gated = ff.startswith("gated-")
    act_name = ff.split("-")[-1]

    def act(x):
        if act_name == "relu":
            return torch.relu(x)
        if act_name == "gelu":  # "gated-gelu" -> gelu_new (tanh approximation)
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
        if act_name == "silu":
            return x * torch.sigmoid(x)
        raise ValueError(act_name)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def attn(p, x, kv, bias, causal):
        q = (x @ sd[p + "q.weight"].T).view(-1, H, dk).transpose(0, 1)
        k = (kv @ sd[p + "k.weight"].T).view(-1, H, dk).transpose(0, 1)
        v = (kv @ sd[p + "v.weight"].T).view(-1, H, dk).transpose(0, 1)
        s = q @ k.transpose(1, 2)  # NO 1/sqrt(d_kv) scaling in T5
        if bias is not None:
            s = s + bias
        if causal:
            n = s.shape[-1]
            s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
        o = torch.softmax(s, -1) @ v
        return o.transpose(0, 1).reshape(-1, H * dk) @ sd[p + "o.weight"].T

    def bias_for(p, q_len, k_len, bidirectional):
        rel = torch.arange(k_len)[None, :] - torch.arange(q_len)[:, None]
        b = relative_position_bucket(
            rel, bidirectional, conf["relative_attention_num_buckets"], conf["relative_attention_max_distance"]
        )
        return sd[p + "relative_attention_bias.weight"][b].permute(2, 0, 1)  # [H, q, k]

    def ffn(p, x):
        h = rms(x, sd[p + "layer_norm.weight"])
        if gated:
            h = act(h @ sd[p + "DenseReluDense.wi_0.weight"].T) * (h @ sd[p + "DenseReluDense.wi_1.weight"].T)
        else:
            h = act(h @ sd[p + "DenseReluDense.wi.weight"].T)
        return x + h @ sd[p + "DenseReluDense.wo.weight"].T

    # encoder
    x = emb[torch.tensor(input_ids)]
    n_enc = conf["num_layers"]
    bias = bias_for("encoder.block.0.layer.0.SelfAttention.", len(input_ids), len(input_ids), True)
    for i in range(n_enc):
        p = f"encoder.block.{i}.layer."
        x = x + attn(p + "0.SelfAttention.", rms(x, sd[p + "0.layer_norm.weight"]), rms(x, sd[p + "0.layer_norm.weight"]), bias, False)
        x = ffn(p + "1.", x)
    enc = rms(x, sd["encoder.final_layer_norm.weight"])
    # decoder
    y = emb[torch.tensor(decoder_input_ids)]
    n_dec = conf.get("num_decoder_layers") or n_enc
    T = len(decoder_input_ids)
    bias = bias_for("decoder.block.0.layer.0.SelfAttention.", T, T, False)
    for i in range(n_dec):
        p = f"decoder.block.{i}.layer."
        h = rms(y, sd[p + "0.layer_norm.weight"])
        y = y + attn(p + "0.SelfAttention.", h, h, bias, True)
        h = rms(y, sd[p + "1.layer_norm.weight"])
        y = y + attn(p + "1.EncDecAttention.", h, enc, None, False)  # cross-attention: no position bias
        y = ffn(p + "2.", y)
    y = rms(y, sd["decoder.final_layer_norm.weight"])
    if scale:
        y = y * D**-0.5
    return y @ head.T


def load_files_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


# --------------------------------------------------------------------------------------
# reference computation
# --------------------------------------------------------------------------------------


def load_model(folder: Path, dtype=torch.float32) -> T5ForConditionalGeneration:
    m = T5ForConditionalGeneration.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager")
    return m.eval()


def check_loaded(model, folder: Path, conf: dict) -> None:
    """Make sure transformers read the files the way they are meant."""
    files = load_files_state_dict(folder)
    scale, untied = expected_semantics(conf, files)
    assert bool(model.config.scale_decoder_outputs) == scale, (folder, model.config.scale_decoder_outputs, scale)
    emb = files.get("shared.weight", files.get("encoder.embed_tokens.weight")).float()
    assert torch.equal(model.shared.weight.float(), emb)
    assert torch.equal(model.encoder.embed_tokens.weight.float(), emb)
    assert torch.equal(model.decoder.embed_tokens.weight.float(), emb)
    if untied:
        assert torch.equal(model.lm_head.weight.float(), files["lm_head.weight"].float())
        assert not torch.equal(model.lm_head.weight.float(), emb)
    else:
        assert torch.equal(model.lm_head.weight.float(), emb)
    msd = model.state_dict()
    for k, v in files.items():
        if k in msd:
            assert torch.equal(msd[k].float(), v.float()), k


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -lp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)


def shift_right(labels: list[int]) -> list[int]:
    return [PAD_ID] + labels[:-1]


@torch.no_grad()
def batch_mean_loss(model, enc: list[list[int]], lab: list[list[int]]) -> float:
    B = len(enc)
    S = max(map(len, enc))
    T = max(map(len, lab))
    ids = torch.full((B, S), PAD_ID, dtype=torch.long)
    mask = torch.zeros((B, S), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for i, (e, l) in enumerate(zip(enc, lab)):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
        labels[i, : len(l)] = torch.tensor(l)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    nll = token_nll(out.logits, labels)
    valid = labels != -100
    return float(nll[valid].sum() / valid.sum())


@torch.no_grad()
def greedy_manual_check(model, ids: list[int], generated: list[int]) -> float:
    """Re-derive greedy decoding with full teacher-forced forwards; return min top1-top2 margin."""
    x = torch.tensor([ids])
    dec = [PAD_ID]
    margin = float("inf")
    for step in range(MAX_NEW_TOKENS):
        logits = model(input_ids=x, decoder_input_ids=torch.tensor([dec])).logits[0, -1]
        top = torch.topk(logits, 2)
        margin = min(margin, float(top.values[0] - top.values[1]))
        nxt = int(top.indices[0])
        dec.append(nxt)
        if nxt == EOS_ID:
            break
    assert dec[1:] == generated, (dec[1:], generated)
    return margin


@torch.no_grad()
def compute_reference(name: str, folder: Path, examples: list[dict], hf_tok, raw_tok: Tokenizer, bf16: bool = False) -> dict:
    conf = json.loads((folder / "config.json").read_text())
    model = load_model(folder, torch.float32)
    check_loaded(model, folder, conf)
    files = load_files_state_dict(folder)
    out_examples = []
    enc_all, lab_all = [], []
    tot_loss, tot_n = 0.0, 0
    min_margin = float("inf")
    for i, ex in enumerate(examples):
        ids = hf_tok(ex["source"]).input_ids
        labels = hf_tok(ex["target"]).input_ids
        assert ids == raw_tok.encode(ex["source"]).ids and labels == raw_tok.encode(ex["target"]).ids
        assert ids[-1] == EOS_ID and labels[-1] == EOS_ID
        x = torch.tensor([ids])
        y = torch.tensor([labels])
        out = model(input_ids=x, labels=y)
        logits = out.logits[0]
        nll = token_nll(logits, y[0])
        loss_sum = float(nll.sum())
        assert abs(float(out.loss) - loss_sum / len(labels)) < 1e-5 * max(1.0, loss_sum)
        # independent float64 implementation must agree with transformers' f32 logits
        man = manual_forward(files, conf, ids, shift_right(labels))
        err = float((man - logits.double()).abs().max())
        assert err < 1e-4 * max(1.0, float(man.abs().max())), (name, i, err)
        # transformers 5.24 bug: the decoder KV cache is sized by config.num_layers (the ENCODER depth), so
        # cached generation crashes when num_decoder_layers > num_layers; recompute without cache there
        # (identical greedy result, and greedy_manual_check re-derives it anyway).
        use_cache = conf.get("num_decoder_layers") is None or conf["num_decoder_layers"] <= conf["num_layers"]
        gen = model.generate(
            x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS,
            use_cache=use_cache,
        )[0].tolist()
        assert gen[0] == PAD_ID
        gen = gen[1:]
        min_margin = min(min_margin, greedy_manual_check(model, ids, gen))
        out_examples.append(
            {
                "source": ex["source"],
                "target": ex["target"],
                "input_ids": ids,
                "label_ids": labels,
                "loss_sum": loss_sum,
                "n_tokens": len(labels),
                "logits": f32list(logits) if i < N_LOGIT_EXAMPLES else None,
                "generated_ids": gen,
                "generated_text": hf_tok.decode(gen, skip_special_tokens=True),
            }
        )
        enc_all.append(ids)
        lab_all.append(labels)
        tot_loss += loss_sum
        tot_n += len(labels)
    if min_margin < TIE_MARGIN:
        return None  # near-tie in greedy decoding: the caller re-draws the weights with another seed
    ref = {
        "model": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "scale_decoder_outputs": bool(model.config.scale_decoder_outputs),
        "examples": out_examples,
        "mean_loss": tot_loss / tot_n,
        "batch_mean_loss": batch_mean_loss(model, enc_all, lab_all),
        "min_greedy_margin": min_margin,
    }
    assert abs(ref["batch_mean_loss"] - ref["mean_loss"]) < 1e-5 * ref["mean_loss"]
    if bf16:
        mb = load_model(folder, torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in mb.parameters())
        s, n = 0.0, 0
        for ex in out_examples:
            lg = mb(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["label_ids"]])).logits[0]
            s += float(token_nll(lg, torch.tensor(ex["label_ids"])).sum())
            n += len(ex["label_ids"])
        ref["bf16"] = {
            "mean_loss": s / n,
            "note": "T5ForConditionalGeneration.from_pretrained(dtype=torch.bfloat16): every weight and "
            "activation in bf16 (T5's _keep_in_fp32_modules=['wo'] only applies to fp16); CE in float64 "
            "from the bf16 logits",
        }
    return ref


# --------------------------------------------------------------------------------------
# fixture models
# --------------------------------------------------------------------------------------

FIXTURES = [
    # a. T5 v1.0: relu, tied, decoder output rescaled by d_model**-0.5; v4-era config (no scale flag)
    dict(name="relu-tied", seed=101, ff="relu", d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
         num_decoder_layers=2, buckets=8, max_distance=12, extra_vocab=28, untied=False,
         config_patch={"tie_word_embeddings": True, "scale_decoder_outputs": None}),
    # b. T5 v1.1 / flan: gated-gelu (gelu_new), own lm_head, no rescale; v4-era hand-written files
    dict(name="gated-untied", seed=202, ff="gated-gelu", d_model=40, d_kv=12, num_heads=3, d_ff=56,
         num_layers=3, num_decoder_layers=2, buckets=16, max_distance=20, extra_vocab=12, untied=True,
         config_patch={"tie_word_embeddings": False, "scale_decoder_outputs": None, "dtype": None,
                       "torch_dtype": "float32"}),
    # c. gated-silu, tied (tie_word_embeddings absent -> default True -> rescale), two shards, the shared
    #    embedding stored only as encoder.embed_tokens.weight
    dict(name="sharded-silu", seed=303, ff="gated-silu", d_model=24, d_kv=6, num_heads=2, d_ff=40,
         num_layers=1, num_decoder_layers=2, buckets=32, max_distance=128, extra_vocab=6, untied=False,
         shards=2, embed_name="encoder.embed_tokens.weight",
         config_patch={"tie_word_embeddings": None, "scale_decoder_outputs": None}),
    # d. as (a), other seed, stored in bf16; config as transformers 5 writes it
    dict(name="relu-bf16", seed=404, ff="relu", d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
         num_decoder_layers=2, buckets=8, max_distance=12, extra_vocab=28, untied=False, dtype=torch.bfloat16,
         config_patch={}),
    # e. transformers-5 flag: tied head but scale_decoder_outputs false (explicit flag beats the tie default)
    dict(name="v5-flag", seed=505, ff="gated-gelu", d_model=28, d_kv=7, num_heads=4, d_ff=44, num_layers=2,
         num_decoder_layers=1, buckets=10, max_distance=16, extra_vocab=4, untied=False,
         config_patch={"tie_word_embeddings": True, "scale_decoder_outputs": False}),
    # f. an untied (flan-style) checkpoint loaded and re-saved by transformers 5: config says
    #    tie_word_embeddings TRUE + scale_decoder_outputs false, files hold shared.weight AND a different
    #    lm_head.weight -> transformers keeps the separate head (the file's lm_head wins over the tie flag)
    dict(name="v5-untied-resave", seed=606, ff="gated-gelu", d_model=24, d_kv=8, num_heads=2, d_ff=32,
         num_layers=1, num_decoder_layers=1, buckets=12, max_distance=40, extra_vocab=0, untied=True,
         resave=True, config_patch={"tie_word_embeddings": False, "scale_decoder_outputs": None}),
]


def build_fixture(spec: dict, root: Path, tok_path: Path, tok_size: int) -> dict[str, torch.Tensor]:
    cfg = make_config(spec, tok_size + spec["extra_vocab"])
    sd = random_weights(cfg, spec["seed"], spec["untied"])
    dtype = spec.get("dtype", torch.float32)
    if dtype != torch.float32:
        sd = {k: v.to(dtype).to(torch.float32) for k, v in sd.items()}
    dst = root / spec["name"]
    if dst.exists():
        shutil.rmtree(dst)
    write_checkpoint(
        dst, cfg, sd, dtype=dtype, embed_name=spec.get("embed_name", "shared.weight"),
        shards=spec.get("shards", 1), config_patch=spec["config_patch"],
    )
    if spec.get("resave"):
        # let transformers 5 itself re-save what it loaded (what users' re-saved flan-t5 copies look like)
        model = load_model(dst, torch.float32)
        shutil.rmtree(dst)
        model.save_pretrained(str(dst))
    write_tokenizer_files(dst, tok_path)
    return sd


# relative-position bucket tables from transformers itself (for a unit test of the Rust bucket function)
BUCKET_CONFIGS = [(32, 128), (8, 12), (16, 20), (10, 16), (6, 7), (18, 128), (17, 27), (36, 32), (19, 288), (20, 160)]


def bucket_tables() -> dict:
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)
    tables = []
    for nb, md in BUCKET_CONFIGS:
        for bidir in (True, False):
            b = T5Attention._relative_position_bucket(rel, bidirectional=bidir, num_buckets=nb, max_distance=md)
            assert torch.equal(b, relative_position_bucket(rel, bidir, nb, md))
            tables.append(
                {"num_buckets": nb, "max_distance": md, "bidirectional": bidir, "buckets": b.tolist()}
            )
    return {
        "description": "transformers T5Attention._relative_position_bucket(relative_position = key_pos - query_pos)"
        " for relative_position in [rel_min, rel_max]; bidirectional=true for the encoder, false for decoder"
        " self-attention. The log is evaluated in float32; some configs here differ from a float64 evaluation.",
        "rel_min": -300,
        "rel_max": 300,
        "tables": tables,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures", type=Path)
    ap.add_argument("--seed", default=1234, type=int, help="seed of the synthetic language")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    corpus = Language(args.seed).corpus(600)
    tok = build_tokenizer(corpus)
    tok_path = out / "tokenizer.json"
    tok.save(str(tok_path), pretty=True)
    raw_tok = Tokenizer.from_file(str(tok_path))
    tok_size = raw_tok.get_vocab_size(with_added_tokens=True)

    examples = make_examples(args.seed + 1, raw_tok)
    with open(out / "data.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")

    dump_json(out / "relative_buckets.json", bucket_tables(), indent=None)

    t5_root = out / "t5"
    t5_root.mkdir(exist_ok=True)
    for spec in FIXTURES:
        folder = t5_root / spec["name"]
        for attempt in range(50):
            seed = spec["seed"] + 1000 * attempt
            build_fixture(dict(spec, seed=seed), t5_root, tok_path, tok_size)
            hf_tok = load_hf_tokenizer(folder)
            assert len(hf_tok) == tok_size
            assert (hf_tok.pad_token_id, hf_tok.eos_token_id, hf_tok.unk_token_id) == (PAD_ID, EOS_ID, UNK_ID)
            check_transformers_tokenizer(folder, raw_tok, examples)
            ref = compute_reference(
                spec["name"], folder, examples, hf_tok, raw_tok, bf16=spec.get("dtype") == torch.bfloat16
            )
            if ref is not None:
                break
        else:
            raise SystemExit(f"{spec['name']}: no seed without greedy near-ties")
        ref = {"model": ref.pop("model"), "seed": seed, **ref}
        dump_json(folder / "reference.json", ref, indent=1)
        for p in folder.iterdir():
            p.chmod(0o644)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(
            f"{spec['name']:14s} vocab={tok_size + spec['extra_vocab']:4d} mean_loss={ref['mean_loss']:.6f} "
            f"batch={ref['batch_mean_loss']:.6f} margin={ref['min_greedy_margin']:.3f} size={size / 1024:.0f}KiB",
            file=sys.stderr,
        )
    print(f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
