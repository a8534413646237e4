#!/usr/bin/env python3
"""The shipped model organisms in transformers: same loss as `ept eval`, and the committed fixtures.

    python scripts/check_organism.py --ept target/debug/ept            # compare, print, exit 1 on a mismatch
    python scripts/check_organism.py --ept target/debug/ept --write    # also (re)write the fixture
    python scripts/check_organism.py --ept target/debug/ept --organism organism-llama [--write]

The decoder organism (`--organism organism-llama`, assets/organism-llama) is loaded with
`LlamaForCausalLM` and scored as ept scores every decoder example: the source through the
tokenizer (which puts `<s>` in front), then the target's tokens without special tokens and
`</s>`, only the target and `</s>` scored, each by the logits one position before it
(right-padded batches, padding masked). Its fixture is
tests/fixtures/organism-llama/transformers_losses.json.

For each toy task (toy-sst2, toy-mnli, toy-qqp, toy-stsb) it takes the validation rows exactly as
ept formats them (`ept tasks show TASK --split validation --json`), loads `assets/organism` with
transformers (`T5ForConditionalGeneration`, float32, eval mode) and the tokenizer with
`PreTrainedTokenizerFast(tokenizer_file=...)`, and computes the token-weighted mean cross-entropy
over every target token including `</s>` (padding excluded). It runs `ept eval --model
assets/organism --task TASK --split validation --json` and compares the two losses: relative
tolerance --tol (1e-4). It does the same in bf16 mixed precision: transformers under
`torch.autocast("cpu", dtype=torch.bfloat16)` against `ept eval --dtype bf16-mixed`, relative
tolerance --tol-bf16 (5e-3: autocast also rounds the attention products, the head and every
product's output to bf16, ept only the dense layers' inputs). With --write, the transformers losses go to
tests/fixtures/organism/transformers_losses.json, which `cargo test` (tests/suite/organism_model.rs)
checks ept against without Python.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["toy-sst2", "toy-mnli", "toy-qqp", "toy-stsb"]


def rows(ept: str, task: str) -> list[dict]:
    out = subprocess.run(
        [ept, "tasks", "show", task, "--split", "validation", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def seq2seq_batch(model, tok, chunk: list[dict]):
    """T5: the logits of the targets (`tokens </s>`) and the labels, padding -100."""
    enc = tok([e["source"] for e in chunk], return_tensors="pt", padding=True)
    lab = tok([e["target"] for e in chunk], return_tensors="pt", padding=True)
    labels = lab.input_ids.masked_fill(lab.attention_mask == 0, -100)
    logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).logits
    return logits, labels


def decoder_batch(model, tok, chunk: list[dict]):
    """A decoder: `<s> source` then `target </s>` right-padded; the logits one position before
    each token, the labels -100 but on the target and `</s>`."""
    rows = []
    for e in chunk:
        src = tok(e["source"]).input_ids
        tgt = tok(e["target"], add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append((src + tgt, [-100] * len(src) + tgt))
    t = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (t - len(r)) for r, _ in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r, _ in rows])
    labels = torch.tensor([lab + [-100] * (t - len(lab)) for _, lab in rows])
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[:, :-1], labels[:, 1:]


@torch.no_grad()
def transformers_loss(model, tok, examples: list[dict], batch, bf16_mixed=False) -> tuple[float, int]:
    total, tokens = 0.0, 0
    for i in range(0, len(examples), 32):
        chunk = examples[i : i + 32]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_mixed):
            logits, labels = batch(model, tok, chunk)
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).double(),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += ce.item()
        tokens += int((labels != -100).sum())
    return total / tokens, tokens


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ept", default=str(ROOT / "target" / "debug" / "ept"))
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--tol-bf16", type=float, default=5e-3)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--organism", default="organism", choices=["organism", "organism-llama"])
    ap.add_argument("--model", help="another folder of the same architecture (no --write)")
    args = ap.parse_args()
    organism = Path(args.model) if args.model else ROOT / "assets" / args.organism
    fixture_path = ROOT / "tests" / "fixtures" / args.organism / "transformers_losses.json"
    torch.manual_seed(0)
    decoder = json.loads((organism / "config.json").read_text())["model_type"] == "llama"
    cls = LlamaForCausalLM if decoder else T5ForConditionalGeneration
    model = cls.from_pretrained(organism, dtype=torch.float32).eval()
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(organism / "tokenizer.json"),
        pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        **({"bos_token": "<s>"} if decoder else {}),
    )
    batch = decoder_batch if decoder else seq2seq_batch
    fixture, failed = {}, False
    for task in TASKS:
        examples = rows(args.ept, task)
        ref, tokens = transformers_loss(model, tok, examples, batch)
        got = json.loads(
            subprocess.run(
                [args.ept, "eval", "--model", str(organism), "--task", task,
                 "--split", "validation", "--json"],
                check=True, capture_output=True, text=True,
            ).stdout
        )
        rel = abs(got["loss"] - ref) / abs(ref)
        ok = rel <= args.tol and got["tokens"] == tokens
        failed |= not ok
        print(f"{task:9} transformers {ref:.6f}  ept {got['loss']:.6f}  tokens {tokens}/{got['tokens']}"
              f"  relative difference {rel:.1e}  {'ok' if ok else 'MISMATCH'}")
        ref16, _ = transformers_loss(model, tok, examples, batch, bf16_mixed=True)
        got16 = json.loads(
            subprocess.run(
                [args.ept, "eval", "--model", str(organism), "--task", task,
                 "--split", "validation", "--dtype", "bf16-mixed", "--json"],
                check=True, capture_output=True, text=True,
            ).stdout
        )
        rel16 = abs(got16["loss"] - ref16) / abs(ref16)
        ok16 = rel16 <= args.tol_bf16
        failed |= not ok16
        print(f"{'':9} bf16-mixed: transformers (autocast) {ref16:.6f}  ept {got16['loss']:.6f}"
              f"  relative difference {rel16:.1e}  {'ok' if ok16 else 'MISMATCH'}")
        fixture[task] = {"split": "validation", "loss": ref, "tokens": tokens, "examples": len(examples),
                         "bf16_mixed_loss": ref16}
    if args.write:
        fixture_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"transformers": __import__("transformers").__version__, "torch": torch.__version__}
        fixture_path.write_text(json.dumps({"made_with": meta, "losses": fixture}, indent=2) + "\n")
        print(f"wrote {fixture_path.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
