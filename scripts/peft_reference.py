#!/usr/bin/env python3
"""Reference for `ept export --format peft` (METHOD.md §8), checked with PEFT itself.

    python scripts/peft_reference.py --out tests/fixtures/peft

From the PT prompt fixture tests/fixtures/prompt/pt/prompt.safetensors (tensor
`prompt` [l, d], FORMAT.md) and the model tests/fixtures/t5/relu-tied it writes

    <out>/pt-adapter/adapter_config.json       the PEFT prompt-tuning config
    <out>/pt-adapter/adapter_model.safetensors `prompt_embeddings` [l, d] f32,
                                               metadata {"format": "pt"}
    <out>/reference.json                       {peft_version, loss, n_tokens,
                                               adapter_config, ...}

then loads the adapter with
`peft.PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(model), adapter_dir)`
(no warnings allowed), and computes the token-mean cross-entropy transformers
returns on tests/fixtures/data.jsonl (all examples in one padded batch, labels
padded with -100, sources truncated to the prompt's `ept.max_len` tokens with
`</s>` kept last, as ept does). The loss is checked against the plain
concatenation reference (prompt rows prepended to inputs_embeds, attention mask
prefixed with ones) and against tests/fixtures/prompt/pt/reference.json.
CPU, f32, eval mode, single-threaded; files written with sorted keys so that
reruns are byte-identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
import warnings
from collections import OrderedDict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
PAD_ID, EOS_ID = 0, 1


def rel(path: str) -> str:
    return os.path.relpath(os.path.abspath(path), REPO)


def save_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """f32 safetensors with a sorted, byte-stable header (same layout as the
    `safetensors` package writes for one tensor)."""
    header: "OrderedDict[str, object]" = OrderedDict()
    if metadata:
        header["__metadata__"] = OrderedDict((k, str(metadata[k])) for k in sorted(metadata))
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        raw = t.numpy().astype("<f4").tobytes()
        header[name] = OrderedDict([("dtype", "F32"), ("shape", list(t.shape)),
                                    ("data_offsets", [offset, offset + len(raw)])])
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


def adapter_config_for(prompt_meta: dict, model_cfg: dict, n: int, d: int, base_model: str) -> "OrderedDict":
    """METHOD.md §8, exactly the keys ept writes (sorted, like PEFT's own save_pretrained)."""
    assert model_cfg["d_model"] == d, (model_cfg["d_model"], d)
    cfg = {
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "num_attention_heads": model_cfg["num_heads"],
        "num_layers": model_cfg["num_layers"],
        "num_transformer_submodules": 1,
        "num_virtual_tokens": n,
        "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": "RANDOM",
        "task_type": "SEQ_2_SEQ_LM",
        "token_dim": d,
    }
    return OrderedDict((k, cfg[k]) for k in sorted(cfg))


def write_json(path: str, obj, indent=2, newline=True, sort_keys=True) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=indent, sort_keys=sort_keys))
        if newline:
            f.write("\n")


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


def tokenize(tok, data, max_len: int):
    """Sources truncated to max_len tokens (</s> kept last) when max_len > 0; targets untouched."""
    srcs, tgts = [], []
    for ex in data:
        bare = tok(ex["source"], add_special_tokens=False)["input_ids"]
        if max_len > 0:
            ids = tok(ex["source"], truncation=True, max_length=max_len)["input_ids"]
            assert ids == bare[: max_len - 1] + [EOS_ID], (ids, bare)
        else:
            ids = tok(ex["source"])["input_ids"]
            assert ids == bare + [EOS_ID]
        srcs.append(ids)
        tgt = tok(ex["target"])["input_ids"]
        assert tgt[-1] == EOS_ID
        tgts.append(tgt)
    return srcs, tgts


def pad_batch(srcs, tgts):
    t = max(len(s) for s in srcs)
    u = max(len(y) for y in tgts)
    ids = torch.full((len(srcs), t), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(srcs), t), dtype=torch.long)
    labels = torch.full((len(tgts), u), -100, dtype=torch.long)
    for i, (s, y) in enumerate(zip(srcs, tgts)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def load_base(model_dir: str):
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                       attn_implementation="eager")
    model.eval()
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(FIXTURES, "peft"))
    ap.add_argument("--prompt", default=os.path.join(FIXTURES, "prompt", "pt", "prompt.safetensors"))
    ap.add_argument("--model", default=os.path.join(FIXTURES, "t5", "relu-tied"))
    ap.add_argument("--data", default=os.path.join(FIXTURES, "data.jsonl"))
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    import peft
    import transformers
    from peft import PeftConfig, PeftModel
    from transformers import AutoTokenizer

    # ---- the adapter ept must write -------------------------------------
    tensors, meta = load_safetensors(args.prompt)
    assert set(tensors) == {"prompt"}, sorted(tensors)
    assert meta.get("ept.method") == "pt"
    prompt = tensors["prompt"].float()
    n, d = prompt.shape
    model_cfg = json.load(open(os.path.join(args.model, "config.json")))
    base_model = rel(args.model)
    assert meta.get("ept.model") in (None, base_model), (meta.get("ept.model"), base_model)
    cfg = adapter_config_for(meta, model_cfg, n, d, base_model)
    adir = os.path.join(args.out, "pt-adapter")
    os.makedirs(adir, exist_ok=True)
    # PEFT writes json.dumps(indent=2, sort_keys=True) with no trailing newline; do the same
    write_json(os.path.join(adir, "adapter_config.json"), cfg, indent=2, newline=False)
    save_safetensors(os.path.join(adir, "adapter_model.safetensors"), {"prompt_embeddings": prompt},
                     {"format": "pt"})

    # ---- load it with PEFT, recording every warning ----------------------
    cap = Captured()
    loggers = [logging.getLogger(x) for x in ("peft", "transformers")]
    for lg in loggers:
        lg.addHandler(cap)
    transformers.utils.logging.disable_progress_bar()
    base = load_base(args.model)
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always")
        pcfg = PeftConfig.from_pretrained(adir)
        pmodel = PeftModel.from_pretrained(base, adir)
    for lg in loggers:
        lg.removeHandler(cap)
    load_warnings = [f"{w.category.__name__}: {w.message}" for w in wlist] + cap.records
    # peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` (a transformers 5.x
    # FutureWarning unrelated to the adapter files); anything else fails the run
    unrelated = [w for w in load_warnings if "is_gradient_checkpointing" in w]
    assert not [w for w in load_warnings if w not in unrelated], load_warnings
    pmodel.eval()
    assert type(pmodel).__name__ == "PeftModelForSeq2SeqLM", type(pmodel)
    assert not any(m.training for m in pmodel.modules())
    emb = pmodel.prompt_encoder["default"].embedding.weight
    assert tuple(emb.shape) == (n, d) and torch.equal(emb.detach(), prompt)
    # PEFT 0.21 leaves the prompt embedding requires_grad=True even when loaded for inference
    prompt_requires_grad = bool(emb.requires_grad)
    loaded = pmodel.peft_config["default"].to_dict()
    for k, v in cfg.items():
        assert loaded[k] == v, (k, loaded[k], v)
    peft_filled = OrderedDict((k, loaded[k]) for k in sorted(loaded) if k not in cfg)
    assert pcfg.to_dict() == loaded

    # PEFT's own save of the loaded adapter: same tensor bytes and metadata
    tmp = os.path.join(args.out, ".peft-resave")
    pmodel.save_pretrained(tmp)
    st_mine = open(os.path.join(adir, "adapter_model.safetensors"), "rb").read()
    st_peft = open(os.path.join(tmp, "adapter_model.safetensors"), "rb").read()
    resaved_cfg = json.load(open(os.path.join(tmp, "adapter_config.json")))
    rt, rmeta = load_safetensors(os.path.join(tmp, "adapter_model.safetensors"))
    assert set(rt) == {"prompt_embeddings"} and torch.equal(rt["prompt_embeddings"], prompt)
    assert rmeta == {"format": "pt"}, rmeta
    resave_identical = st_mine == st_peft
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)
    # the resaved config differs from ours only by the keys PEFT fills in (and inference_mode, which
    # save_pretrained keeps as loaded)
    for k, v in cfg.items():
        assert resaved_cfg[k] == v, (k, resaved_cfg[k], v)

    # ---- the loss ---------------------------------------------------------
    tok = AutoTokenizer.from_pretrained(args.model)
    with open(args.data, encoding="utf-8") as f:
        data = [json.loads(line) for line in f if line.strip()]
    max_len = int(meta.get("ept.max_len", "0"))

    def losses(ml):
        srcs, tgts = tokenize(tok, data, ml)
        ids, mask, labels = pad_batch(srcs, tgts)
        n_tok = int((labels != -100).sum())
        with torch.no_grad():
            out = pmodel(input_ids=ids, attention_mask=mask, labels=labels)
            # plain concatenation on the same (frozen) base model, PEFT hooks not involved
            plain = pmodel.get_base_model()
            e = plain.get_input_embeddings()(ids)
            x = torch.cat([prompt.unsqueeze(0).expand(ids.shape[0], -1, -1), e], dim=1)
            m2 = torch.cat([mask.new_ones(ids.shape[0], n), mask], dim=1)
            ref = plain(inputs_embeds=x, attention_mask=m2, labels=labels)
            manual = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1),
                                     ignore_index=-100, reduction="sum") / n_tok
        lp, lr_ = float(out.loss), float(ref.loss)
        assert abs(lp - lr_) <= 1e-6, (lp, lr_)
        assert abs(float(manual) - lp) <= 1e-6 * abs(lp), (float(manual), lp)
        return lp, lr_, n_tok, srcs, int(ids.shape[1])

    loss, loss_concat, n_tokens, srcs, batch_len = losses(max_len)
    n_trunc = sum(1 for s in srcs if max_len > 0 and len(s) == max_len)
    loss_full, loss_full_concat, n_tok_full, srcs_full, batch_len_full = losses(0)
    assert n_tok_full == n_tokens

    pt_ref_path = os.path.join(os.path.dirname(args.prompt), "reference.json")
    pt_ref = json.load(open(pt_ref_path)) if os.path.exists(pt_ref_path) else None
    if pt_ref is not None:
        assert pt_ref["m"] == max_len and pt_ref["input_ids"] == srcs
        assert abs(pt_ref["loss"] - loss) <= 1e-6, (pt_ref["loss"], loss)

    ref = OrderedDict()
    ref["peft_version"] = peft.__version__
    ref["transformers_version"] = transformers.__version__
    ref["torch_version"] = torch.__version__.split("+")[0]
    ref["prompt"] = rel(args.prompt)
    ref["model"] = base_model
    ref["data"] = rel(args.data)
    ref["adapter_dir"] = rel(adir)
    ref["adapter_config"] = cfg
    ref["adapter_tensors"] = {"prompt_embeddings": [n, d]}
    ref["adapter_metadata"] = {"format": "pt"}
    ref["loss"] = loss
    ref["n_tokens"] = n_tokens
    ref["truncation"] = (f"sources truncated to ept.max_len = {max_len} tokens (</s> kept last): "
                         f"{n_trunc} of {len(srcs)} sources truncated, batch length {batch_len}")
    ref["max_len"] = max_len
    ref["batch_len"] = batch_len
    ref["loss_concat_reference"] = loss_concat
    ref["abs_diff_peft_vs_concat"] = abs(loss - loss_concat)
    ref["loss_untruncated"] = loss_full
    ref["batch_len_untruncated"] = batch_len_full
    ref["loss_pt_fixture"] = pt_ref["loss"] if pt_ref is not None else None
    ref["load_warnings"] = load_warnings
    ref["load_warnings_about_adapter"] = [w for w in load_warnings if w not in unrelated]
    ref["peft_filled_config"] = peft_filled
    ref["peft_resave_safetensors_identical"] = resave_identical
    ref["peft_prompt_requires_grad_after_load"] = prompt_requires_grad
    ref["notes"] = [
        "Loaded with peft.PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(model, "
        "dtype=float32, attn_implementation='eager'), adapter_dir) -> PeftModelForSeq2SeqLM, eval mode. "
        "No warning about the adapter files (load_warnings_about_adapter is empty); the only warning "
        "(load_warnings) is transformers 5's FutureWarning that peft calls the deprecated "
        "is_gradient_checkpointing.",
        "PEFT requires only peft_type in adapter_config.json (MIN_EXPECTED_CONFIG_KEYS); every other key has a "
        "dataclass default, so missing keys are filled silently (see peft_filled_config; peft_version is "
        "auto-filled with the running version). Unknown keys would give a warning and be dropped. task_type "
        "SEQ_2_SEQ_LM selects PeftModelForSeq2SeqLM; without it PEFT builds a plain PeftModel whose forward "
        "silently ignores the prompt (loss = the bare model's). "
        "num_transformer_submodules must be 1: PEFT's default for SEQ_2_SEQ_LM is 2, which makes the "
        "embedding [2*l, d] and the [l, d] checkpoint fails to load. num_layers/token_dim/"
        "num_attention_heads would otherwise be read from the model config (num_hidden_layers, d_model, "
        "num_heads). inference_mode in the file is overridden on load (PeftModel.from_pretrained sets it to "
        "not is_trainable); even so the loaded prompt embedding keeps requires_grad=True "
        "(peft_prompt_requires_grad_after_load), harmless under torch.no_grad(). "
        "AutoPeftModelForSeq2SeqLM.from_pretrained(adapter_dir) also works: it loads the base model from "
        "base_model_name_or_path (here a path relative to the repository root).",
        "The safetensors key is 'prompt_embeddings' (PEFT maps it to prompt_encoder.default.embedding.weight); "
        "metadata {'format': 'pt'} is what PEFT writes; PEFT's own save_pretrained of the loaded model gives "
        "the same tensor and metadata (peft_resave_safetensors_identical: byte-identical file).",
        "PEFT's seq2seq prompt-tuning forward: inputs_embeds = word_embeddings(input_ids); attention_mask = "
        "cat(torch.ones(b, num_virtual_tokens) [float32], attention_mask) -> a float mask; inputs_embeds = "
        "cat(prompt rows, inputs_embeds); the decoder is untouched (decoder_attention_mask not prefixed, "
        "labels not prefixed for PROMPT_TUNING), labels passed through so the decoder inputs are "
        "shift_right(labels). The loss equals the plain concatenation reference "
        "(abs_diff_peft_vs_concat) and tests/fixtures/prompt/pt/reference.json.",
        "loss is the token-mean cross-entropy transformers returns (sum over the n_tokens non -100 labels / "
        "n_tokens) for all examples in one batch padded to the longest source; loss_untruncated is the same "
        "without truncating the sources (PEFT itself never truncates; the truncation is the caller's).",
    ]
    write_json(os.path.join(args.out, "reference.json"), ref, indent=1, sort_keys=False)
    print(f"peft {peft.__version__}: loss={loss!r} n_tokens={n_tokens} (concat {loss_concat!r}, "
          f"untruncated {loss_full!r}); truncated {n_trunc}/{len(srcs)} to {max_len}; "
          f"resave identical={resave_identical}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
