#!/usr/bin/env python3
"""Eval parity on unseen, randomly shaped T5 checkpoints: ept vs transformers.

    python scripts/check_eval_parity.py --ept target/release/ept --n 6 --seed 7
    python scripts/check_eval_parity.py --dry-run --n 6 --seed 7     # transformers side only

For each of --n random configs (d_model 16..64, num_heads 1..4, d_kv 4..16 independent of d_model,
d_ff, encoder/decoder depth 1..3 each, relu / gated-gelu / gated-silu, tied (rescaled), untied
(v4 hand layout: shared.weight + lm_head.weight, tie_word_embeddings false), or tied with the
transformers-5 flag scale_decoder_outputs=false, or untied as transformers 5 re-saves it
(tie_word_embeddings true + scale_decoder_outputs false + a separate lm_head.weight); random relative-attention buckets/max distance,
vocab = tokenizer size + random padding; sometimes two shards, sometimes the embedding stored only as
encoder.embed_tokens.weight, sometimes bf16 weights) it writes a checkpoint plus a few
{"source","target"} lines into a temp dir, runs

    <ept> eval --model DIR --data FILE --json

(one JSON object on stdout with at least "loss" = token-weighted mean cross-entropy over all target
tokens incl. </s>, and "tokens"), and compares with transformers (f32, eval mode; for bf16 checkpoints
the f32 computation on the bf16 weights upcast to f32). Relative tolerance --tol (1e-4).
Exit status 1 if any config fails.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets deterministic env/threads before torch is imported)

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

FF_KINDS = ["relu", "gated-gelu", "gated-silu"]
HEADS = ["tied", "untied", "tied-noscale", "untied-v5"]


def random_spec(r: random.Random, idx: int, tok_size: int) -> dict:
    nb = r.randint(4, 40)  # >= 4 so that max_exact >= 1 in the bidirectional half
    spec = dict(
        name=f"cfg{idx}",
        seed=r.randrange(1 << 30),
        d_model=r.randint(16, 64),
        num_heads=r.randint(1, 4),
        d_kv=r.randint(4, 16),
        d_ff=r.randint(16, 128),
        num_layers=r.randint(1, 3),
        num_decoder_layers=r.randint(1, 3),
        ff=r.choice(FF_KINDS),
        buckets=nb,
        max_distance=r.randint(nb // 2 + 1, 160),
        extra_vocab=r.randint(0, 40),
        head=r.choice(HEADS),
        shards=2 if r.random() < 0.35 else 1,
        embed_name="encoder.embed_tokens.weight" if r.random() < 0.25 else "shared.weight",
        bf16=r.random() < 0.35,
    )
    spec["untied"] = spec["head"] in ("untied", "untied-v5")
    if spec["head"] == "untied-v5":  # how transformers 5 re-saves an untied model
        patch = {"tie_word_embeddings": True, "scale_decoder_outputs": False}
    elif spec["head"] == "untied":  # v4-era flan-t5 layout
        patch = {"tie_word_embeddings": False, "scale_decoder_outputs": None, "dtype": None,
                 "torch_dtype": "bfloat16" if spec["bf16"] else "float32"}
    elif spec["head"] == "tied-noscale":  # transformers-5 explicit flag
        patch = {"tie_word_embeddings": True, "scale_decoder_outputs": False}
    else:  # v4-era t5 layout: sometimes no tie flag at all (defaults to tied + rescale)
        patch = {"scale_decoder_outputs": None}
        if r.random() < 0.5:
            patch["tie_word_embeddings"] = None
    spec["config_patch"] = patch
    return spec


def summary(spec: dict) -> str:
    return (
        f"d{spec['d_model']} h{spec['num_heads']}x{spec['d_kv']} ff{spec['d_ff']} "
        f"L{spec['num_layers']}/{spec['num_decoder_layers']} {spec['ff']} {spec['head']} "
        f"b{spec['buckets']}/{spec['max_distance']} V{spec['vocab']}"
        + (" 2shards" if spec["shards"] == 2 else "")
        + (" enc-emb" if spec["embed_name"] != "shared.weight" else "")
        + (" bf16" if spec["bf16"] else "")
    )


def make_data(r: random.Random, tok: Tokenizer, n_lines: int) -> list[dict]:
    lang = mf.Language(r.randrange(1 << 30))
    out = []
    for i in range(n_lines):
        n_sent = r.choice([1, 1, 2, 3, 5, 8])
        sents, nouns = [], []
        for _ in range(n_sent):
            s, ns = lang.sentence()
            sents.append(s)
            nouns += ns
        prefix = r.choice(["summarize : ", "question : what is near ? context : ", "count : ", "translate : "])
        source = prefix + " ".join(sents)
        if r.random() < 0.2:
            source = source.replace(" ", " " + mf.UNK_CHAR + " ", 1)
        words = nouns[: r.randint(1, 4)]
        while len(words) > 1 and len(tok.encode(" ".join(words)).ids) > mf.MAX_TARGET_TOKENS:
            words.pop()
        out.append({"source": source, "target": " ".join(words)})
    return out


@torch.no_grad()
def transformers_loss(folder: Path, data: list[dict], tok: Tokenizer) -> tuple[float, int, float]:
    """(token-weighted mean CE, #tokens, max |logit diff| vs the float64 manual forward)."""
    conf = json.loads((folder / "config.json").read_text())
    model = mf.load_model(folder, torch.float32)
    mf.check_loaded(model, folder, conf)
    files = mf.load_files_state_dict(folder)
    tot, n, worst = 0.0, 0, 0.0
    for ex in data:
        ids = tok.encode(ex["source"]).ids
        labels = tok.encode(ex["target"]).ids
        logits = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).logits[0]
        tot += float(mf.token_nll(logits, torch.tensor(labels)).sum())
        n += len(labels)
        man = mf.manual_forward(files, conf, ids, mf.shift_right(labels))
        worst = max(worst, float((man - logits.double()).abs().max()))
    return tot / n, n, worst


def run_ept(ept: str, folder: Path, data_file: Path, timeout: float) -> tuple[float | None, int | None, str]:
    cmd = [ept, "eval", "--model", str(folder), "--data", str(data_file), "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, "timeout"
    except OSError as e:
        return None, None, f"cannot run: {e}"
    if p.returncode != 0:
        return None, None, f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
    obj = None
    try:
        obj = json.loads(p.stdout)
    except json.JSONDecodeError:
        for line in reversed(p.stdout.strip().splitlines()):
            try:
                obj = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if not isinstance(obj, dict) or "loss" not in obj:
        return None, None, f"no JSON object with 'loss' on stdout: {p.stdout.strip()[-300:]!r}"
    tokens = obj.get("tokens")
    return float(obj["loss"]), (int(tokens) if tokens is not None else None), ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ept", default="target/release/ept", help="path of the ept binary")
    ap.add_argument("--n", type=int, default=6, help="number of random configs")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--lines", type=int, default=4, help="examples per config")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative tolerance on the mean loss")
    ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/tokenizer.json"))
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per ept run")
    ap.add_argument("--dry-run", action="store_true", help="only compute and print the transformers losses")
    ap.add_argument("--keep", type=Path, default=None, help="write the checkpoints here and keep them")
    args = ap.parse_args()

    tok_path = Path(args.tokenizer)
    tok = Tokenizer.from_file(str(tok_path))
    tok_size = tok.get_vocab_size(with_added_tokens=True)
    r = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="ept-parity-"))
    root.mkdir(parents=True, exist_ok=True)

    header = f"{'#':>2}  {'config':<72} {'tok':>4} {'transformers':>13} {'ept':>13} {'rel diff':>9}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    try:
        for i in range(args.n):
            spec = random_spec(r, i, tok_size)
            spec["vocab"] = tok_size + spec["extra_vocab"]
            data = make_data(r, tok, args.lines)
            folder = root / spec["name"]
            if folder.exists():
                shutil.rmtree(folder)
            cfg = mf.make_config(spec, spec["vocab"])
            sd = mf.random_weights(cfg, spec["seed"], spec["untied"])
            dtype = torch.bfloat16 if spec["bf16"] else torch.float32
            if spec["bf16"]:
                sd = {k: v.to(dtype).to(torch.float32) for k, v in sd.items()}
            mf.write_checkpoint(folder, cfg, sd, dtype=dtype, embed_name=spec["embed_name"],
                                shards=spec["shards"], config_patch=spec["config_patch"])
            mf.write_tokenizer_files(folder, tok_path)
            data_file = root / f"{spec['name']}.jsonl"
            with open(data_file, "w", encoding="utf-8") as f:
                for ex in data:
                    f.write(json.dumps(ex, ensure_ascii=False) + "\n")

            ref, n_tok, man_err = transformers_loss(folder, data, tok)
            if man_err > 1e-3:  # the float64 re-implementation disagrees with transformers
                print(f"warning: cfg{i}: manual forward differs from transformers by {man_err:.2e}", file=sys.stderr)
            if args.dry_run:
                print(f"{i:>2}  {summary(spec):<72} {n_tok:>4} {ref:>13.7f} {'-':>13} {'-':>9}  "
                      f"(dry run, |manual-hf| {man_err:.1e})")
                continue
            got, got_tok, err = run_ept(args.ept, folder, data_file, args.timeout)
            if got is None:
                failures += 1
                print(f"{i:>2}  {summary(spec):<72} {n_tok:>4} {ref:>13.7f} {'-':>13} {'-':>9}  FAIL ({err})")
                continue
            rel = abs(got - ref) / max(abs(ref), 1e-12)
            ok = rel <= args.tol and math.isfinite(got) and (got_tok is None or got_tok == n_tok)
            note = "" if got_tok is None or got_tok == n_tok else f" (ept tokens {got_tok} != {n_tok})"
            failures += not ok
            print(f"{i:>2}  {summary(spec):<72} {n_tok:>4} {ref:>13.7f} {got:>13.7f} {rel:>9.2e}  "
                  f"{'PASS' if ok else 'FAIL'}{note}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if not args.dry_run:
        print(f"\n{args.n - failures}/{args.n} passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
