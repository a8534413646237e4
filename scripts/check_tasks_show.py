#!/usr/bin/env python3
"""`ept tasks show` on tables the tests have never seen: new random GLUE / SuperGLUE / SQuAD data.

    pip install torch pyarrow numpy regex
    python scripts/check_tasks_show.py                         # --seed 9176, target/debug/ept
    python scripts/check_tasks_show.py --seed 31 --keep        # keep the temp dir to look at
    python scripts/check_tasks_show.py --ept target/release/ept

Unlike scripts/make_data_fixtures.py (a few hand-written rows, fixed forever), this draws a fresh
set of synthetic tables from --seed: random sentences built from word lists (ASCII, accented and
combining-mark letters, other scripts, symbols, odd whitespace), random labels, random sizes. All 15
tasks (the 13 of EPT's GLUE/SuperGLUE table + ReCoRD + SQuAD) are written with the real Hugging
Face column names, types and nested structures (WSC spans and word indices, MultiRC `idx` structs
with <b>/<br> markup, ReCoRD entities / entity_spans / answers with @highlight passages, SQuAD
answers structs, float32 STS-B scores chosen to hit rounding ties, unlabelled test splits with
label -1) in the hub cache layout:

    hub/datasets--nyu-mll--glue/snapshots/<hash>/{config}/{split}-0000k-of-0000n.parquet
    hub/datasets--aps--super_glue/snapshots/<hash>/{config}/{split}-...parquet
    hub/datasets--rajpurkar--squad/snapshots/<hash>/plain_text/{split}-...parquet

(some splits sharded, several row groups per file). The large sets (SST-2, QNLI, QQP, ReCoRD,
SQuAD) get 1,001-1,040 short train rows so that DePT's "1,000 shuffled train rows → validation"
rule applies.

The expected rows come from an independent re-statement, in Python, of DePT's `src/tasks.py`
(github.com/ZhengxiangShi/DePT) with add_prefix=False:
  * split rule: small sets: published validation shuffled with torch.randperm(n, seed 42),
    first n//2 → validation, rest → test, train as published; large sets: published train
    shuffled the same way, first 1,000 → validation, rest → train, published validation → test;
    MNLI: validation = validation_mismatched, test = validation_matched;
  * formatting: "field: value" pieces joined by spaces; WSC's T5 span marking with DePT's regex
    (the span text goes into the pattern unescaped, as in DePT); ReCoRD's two @highlight regexes;
    MultiRC's markup regexes; SQuAD's T5 pad_punctuation (the `regex` module, as DePT); STS-B's
    str(np.round((label * 5) / 5, decimals=1)) on the float32 score.
  * `tasks show` prints evaluation rows, so ReCoRD gives one row per query (target = first gold
    answer, "<unk>" when there is none) and SQuAD's target is its first padded answer text; see
    the notes printed at the end for where DePT's own code differs from that.

Then for every task x {train, validation, test} it runs

    ept tasks show TASK --data <snapshot dir> --split SPLIT --json

and, once per task, the validation split again with no --data and HF_HUB_CACHE=<tmp>/hub (the
cache lookup through refs/main), and compares row for row (source and target exactly). Prints a
summary table and the first mismatch in full; exit status 1 on any mismatch or failed run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import regex
import torch

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- word lists

PLAIN = """the a an of to in on at by for with from about over under after before during
man woman child dog cat horse city river valley council report market price team game season
year week government company school teacher student doctor nurse farmer writer singer pilot
said says was were is are be been has had have will would could should might may must not
never always often quickly slowly nearly only also very quite rather more most less least
rose fell grew built opened closed won lost found kept left took gave made told asked
new old small large early late good bad happy angry quiet loud red green blue dark bright
and but or because although while if when where which who whom whose that this these those
he she it they we you I his her its their our my your him them us""".split()

NAMES = ("Alice Bob Carla Dmitri Elena Farid Grace Hiro Ines Jonas Kofi Lena Marta Nils Omar "
         "Priya Quentin Rosa Sven Tariq Uma Victor Wen Xavier Yara Zane").split()

UNICODE = ["café", "naïve", "Fran\u00e7ois", "Zo\u00eb", "Jos\u00e9", "M\u00fcller", "Stra\u00dfe",
           "re\u0301sume\u0301", "Ångstro\u0308m", "Nguy\u1ec5n", "\u0141ukasz", "S\u00f8ren",
           "\u6771\u4eac", "\u041c\u043e\u0441\u043a\u0432\u0430", "\u0395\u03bb\u03bb\u03ac\u03b4\u03b1",
           "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0939\u093f\u0928\u094d\u0926\u0940",
           "\u01c5emal", "\u02b0a", "\u3005\u3006", "\ufb01ne", "\u216b", "x\u00b2", "\u00bd",
           "\u0663\u0664", "\u24b6bc", "x\u00ady", "a\u200bb", "\U0001f642", "snake_case",
           "\u00e9t\u00e9", "d\u00e9j\u00e0-vu"]

SYMBOLS = [",", ".", ";", ":", "!", "?", "--", "-", "(", ")", '"', "'s", "n't", "$5", "3.5%", "1990",
           "U.S.", "e.g.", "\u2014", "\u2026", "\u201cquoted\u201d", "\u2018a\u2019", "&", "#1",
           "@user", "[x]", "{y}", "<i>", "50/50", "\u00b0C", "\u20ac20", "\u00a3", "+", "=", "*",
           "1,000", "9:30", "\u2122", "\u00a9"]

# Whitespace between words: mostly one space, sometimes doubled or unusual (kept verbatim by every
# task but SQuAD, where pad_punctuation collapses it).
SEPS = [" "] * 40 + ["  ", "\t", "\u00a0", " \u3000", "\u2009", "\u0085", "\u2028", "\x0b"]

QWORDS = ["who", "what", "when", "where", "why", "how", "which", "does", "is", "can", "did"]
PRONOUNS = ["he", "she", "it", "they", "him", "her", "them", "his", "its", "their", "himself", "herself"]


class Gen:
    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def word(self, rich: float = 0.15) -> str:
        r = self.r
        x = r.random()
        if x < rich / 2:
            return r.choice(UNICODE)
        if x < rich:
            return r.choice(SYMBOLS)
        if x < rich + 0.12:
            return r.choice(NAMES)
        w = r.choice(PLAIN)
        if r.random() < 0.06:
            w += r.choice([",", ".", ";", "!", "?", "'s", ":"])
        return w

    def sentence(self, lo: int, hi: int, rich: float = 0.15, odd_space: bool = True, end: bool = True) -> str:
        r = self.r
        n = r.randint(lo, hi)
        out = ""
        for k in range(n):
            if k:
                out += r.choice(SEPS) if odd_space else " "
            out += self.word(rich)
        if out and out[0].isalpha() and r.random() < 0.8:
            out = out[0].upper() + out[1:]
        if end and r.random() < 0.85:
            out += r.choice([".", ".", ".", "?", "!", '."', "..."])
        if odd_space and r.random() < 0.03:
            out = r.choice([" ", "", "\t"]) + out + r.choice([" ", "  ", ""])
        return out

    def label(self, k: int) -> int:
        return self.r.randrange(k)

    def stsb_score(self) -> float:
        r = self.r
        kind = r.randrange(6)
        if kind == 0:
            return r.randint(0, 25) * 0.2
        if kind == 1:  # ties at the second decimal: 2.25, 1.75, 0.05 ...
            return r.randint(0, 100) * 0.05
        if kind == 2:
            return round(r.uniform(0, 5), r.randint(1, 4))
        if kind == 3:
            return r.uniform(0, 5)
        if kind == 4:
            return r.choice([0.0, 5.0, 1.05, 4.35, 2.45, 3.65, 0.15, 4.95, 2.5, 0.25])
        return r.randint(0, 15) / 3.0

    def hexid(self, n: int = 40) -> str:
        return "".join(self.r.choice("0123456789abcdef") for _ in range(n))


# ----------------------------------------------------------------------------- tables
S, I64, I32, F32 = pa.string(), pa.int64(), pa.int32(), pa.float32()

SCHEMAS = {
    "cola": pa.schema([("sentence", S), ("label", I64), ("idx", I32)]),
    "sst2": pa.schema([("sentence", S), ("label", I64), ("idx", I32)]),
    "mrpc": pa.schema([("sentence1", S), ("sentence2", S), ("label", I64), ("idx", I32)]),
    "rte": pa.schema([("sentence1", S), ("sentence2", S), ("label", I64), ("idx", I32)]),
    "stsb": pa.schema([("sentence1", S), ("sentence2", S), ("label", F32), ("idx", I32)]),
    "qqp": pa.schema([("question1", S), ("question2", S), ("label", I64), ("idx", I32)]),
    "qnli": pa.schema([("question", S), ("sentence", S), ("label", I64), ("idx", I32)]),
    "mnli": pa.schema([("premise", S), ("hypothesis", S), ("label", I64), ("idx", I32)]),
    "boolq": pa.schema([("question", S), ("passage", S), ("idx", I32), ("label", I64)]),
    "cb": pa.schema([("premise", S), ("hypothesis", S), ("idx", I32), ("label", I64)]),
    "wic": pa.schema([("word", S), ("sentence1", S), ("sentence2", S), ("start1", I32), ("start2", I32),
                      ("end1", I32), ("end2", I32), ("idx", I32), ("label", I64)]),
    "wsc.fixed": pa.schema([("text", S), ("span1_index", I32), ("span2_index", I32), ("span1_text", S),
                            ("span2_text", S), ("idx", I32), ("label", I64)]),
    "multirc": pa.schema([("paragraph", S), ("question", S), ("answer", S),
                          ("idx", pa.struct([("paragraph", I32), ("question", I32), ("answer", I32)])),
                          ("label", I64)]),
    "record": pa.schema([("passage", S), ("query", S), ("entities", pa.list_(S)),
                         ("entity_spans", pa.struct([("text", pa.list_(S)), ("start", pa.list_(I32)),
                                                     ("end", pa.list_(I32))])),
                         ("answers", pa.list_(S)), ("idx", pa.struct([("passage", I32), ("query", I32)]))]),
    "plain_text": pa.schema([("id", S), ("title", S), ("context", S), ("question", S),
                             ("answers", pa.struct([("text", pa.list_(S)), ("answer_start", pa.list_(I32))]))]),
}

# task -> (hub repo, config, published splits)
TASKS = {
    "mnli": ("nyu-mll/glue", "mnli", ["train", "validation_matched", "validation_mismatched",
                                      "test_matched", "test_mismatched"]),
    "qqp": ("nyu-mll/glue", "qqp", ["train", "validation", "test"]),
    "qnli": ("nyu-mll/glue", "qnli", ["train", "validation", "test"]),
    "sst2": ("nyu-mll/glue", "sst2", ["train", "validation", "test"]),
    "cola": ("nyu-mll/glue", "cola", ["train", "validation", "test"]),
    "stsb": ("nyu-mll/glue", "stsb", ["train", "validation", "test"]),
    "mrpc": ("nyu-mll/glue", "mrpc", ["train", "validation", "test"]),
    "rte": ("nyu-mll/glue", "rte", ["train", "validation", "test"]),
    "multirc": ("aps/super_glue", "multirc", ["train", "validation", "test"]),
    "boolq": ("aps/super_glue", "boolq", ["train", "validation", "test"]),
    "wic": ("aps/super_glue", "wic", ["train", "validation", "test"]),
    "wsc": ("aps/super_glue", "wsc.fixed", ["train", "validation", "test"]),
    "cb": ("aps/super_glue", "cb", ["train", "validation", "test"]),
    "record": ("aps/super_glue", "record", ["train", "validation", "test"]),
    "squad": ("rajpurkar/squad", "plain_text", ["train", "validation"]),
}
LARGE = {"sst2", "qnli", "qqp", "record", "squad"}
SMALL = {"cola", "stsb", "mrpc", "rte", "multirc", "boolq", "wic", "wsc", "cb"}


def split_size(g: Gen, task: str, split: str) -> int:
    if split.startswith("test"):
        return g.r.randint(4, 12)
    if task in LARGE and split == "train":
        return g.r.randint(1001, 1040)
    return g.r.randint(20, 60)


def gen_rows(g: Gen, task: str, split: str, n: int) -> list[dict]:
    r = g.r
    test = split.startswith("test")
    big = task in LARGE and split == "train"  # keep the ~1,000-row tables short
    lo, hi = (2, 7) if big else (3, 24)
    rows: list[dict] = []
    if task == "multirc":
        return gen_multirc(g, n, test)
    if task == "record":
        return gen_record(g, n, test, big)
    if task == "squad":
        return gen_squad(g, n, split, big)
    if task == "wsc":
        return [gen_wsc(g, k, test) for k in range(n)]
    for k in range(n):
        if task in ("cola", "sst2"):
            row = {"sentence": g.sentence(lo, hi)}
        elif task in ("mrpc", "rte", "stsb"):
            row = {"sentence1": g.sentence(lo, hi), "sentence2": g.sentence(lo, hi)}
        elif task == "qqp":
            q1 = g.sentence(lo, hi, end=False) + "?"
            q2 = "" if r.random() < 0.02 else g.sentence(lo, hi, end=False) + "?"
            row = {"question1": q1, "question2": q2}
        elif task == "qnli":
            row = {"question": r.choice(QWORDS).capitalize() + " " + g.sentence(lo, hi, end=False) + "?",
                   "sentence": g.sentence(lo, hi)}
        elif task in ("mnli", "cb"):
            prem = g.sentence(lo, hi * 2)
            if task == "cb" and r.random() < 0.3:
                prem = f"B: {prem} A: {g.sentence(3, 8)}"
            row = {"premise": prem, "hypothesis": g.sentence(lo, hi)}
        elif task == "boolq":
            q = " ".join(g.word(0.05) for _ in range(r.randint(3, 9))).lower()
            row = {"question": q, "passage": g.sentence(10, 40)}
        elif task == "wic":
            w = r.choice(["bank", "run", "light", "play", "set", "bear", "charge", "pitch", "caf\u00e9"])
            a, b = g.sentence(2, 8, end=False), g.sentence(1, 8)
            s1 = f"{a} {w} {b}"
            c, d = g.sentence(1, 8, end=False), g.sentence(2, 8)
            s2 = f"{c} {w}s {d}" if r.random() < 0.3 else f"{c} {w} {d}"
            row = {"word": w, "sentence1": s1, "sentence2": s2,
                   "start1": len(a) + 1, "start2": len(c) + 1,
                   "end1": len(a) + 1 + len(w), "end2": len(c) + 1 + len(w)}
        else:
            raise ValueError(task)
        row["idx"] = k
        if task == "stsb":
            row["label"] = -1.0 if test else g.stsb_score()
        else:
            row["label"] = -1 if test else g.label(3 if task in ("mnli", "cb") else 2)
        rows.append(row)
    return rows


WSC_WORDS = [w for w in PLAIN if w not in PRONOUNS] + NAMES + ["Mr.", "Mrs.", "Dr.", "St.", "caf\u00e9",
                                                               "Jos\u00e9", "O'Neil", "don't", "the"]


def gen_wsc(g: Gen, k: int, test: bool) -> dict:
    """A WSC.fixed row: text, a noun-phrase span and a pronoun span with their word indices
    (index = number of whitespace-separated words before the span)."""
    r = g.r
    n = r.randint(6, 22)
    words = [r.choice(WSC_WORDS) for _ in range(n)]
    i1 = r.randrange(n - 2)
    l1 = r.choice([1, 1, 2, 2, 3])
    l1 = min(l1, n - i1 - 1)
    if r.random() < 0.3:
        words[i1] = r.choice(["The", "the", "Mr.", "Dr."])
    choices = [i for i in range(n) if not (i1 <= i < i1 + l1)]
    i2 = r.choice(choices)
    words[i2] = r.choice(PRONOUNS)
    # punctuation glued to words, as in the real texts
    for i in range(n):
        if r.random() < 0.12:
            words[i] += r.choice([",", ".", ";", "'s", "!"])
    words[-1] = words[-1].rstrip(",.;!?") + "."

    def span(i, length):
        t = " ".join(words[i:i + length])
        return t.rstrip(",.;!?") if not t.endswith(("Mr.", "Mrs.", "Dr.", "St.")) else t

    s1, s2 = span(i1, l1), span(i2, 1)
    if s1.endswith("'s") and r.random() < 0.5:
        s1 = s1[:-2]
    # ~12% of rows point a span at the wrong word (the marker then stays out, as in DePT)
    if r.random() < 0.06:
        i1 = min(n - 1, i1 + r.choice([-1, 1]) if i1 else 1)
    if r.random() < 0.06:
        i2 = max(0, i2 + r.choice([-1, 1]))
    text = " ".join(words)
    if r.random() < 0.1:  # other whitespace: the T5 pattern needs exactly one \s between words
        cut = r.randrange(1, n)
        sep = r.choice(["  ", "\t", "\u00a0", "\u3000", " \u2009"])
        text = " ".join(words[:cut]) + sep + " ".join(words[cut:])
    return {"text": text, "span1_index": i1, "span2_index": i2, "span1_text": s1, "span2_text": s2,
            "idx": k, "label": -1 if test else g.label(2)}


def gen_multirc(g: Gen, n: int, test: bool) -> list[dict]:
    r = g.r
    rows = []
    p = q = a = 0
    while len(rows) < n:
        sents = [g.sentence(3, 12) for _ in range(r.randint(2, 6))]
        para = "".join(f"<b>Sent {i + 1}: </b>{s}<br>" for i, s in enumerate(sents))
        if r.random() < 0.3:
            para = para.replace("<br>", "<br> ", 1)
        for _ in range(r.randint(1, 3)):
            question = r.choice(QWORDS).capitalize() + " " + g.sentence(2, 8, end=False) + "?"
            if r.random() < 0.05:
                question = "<b>" + question + "</b>"
            for _ in range(r.randint(2, 5)):
                ans = g.sentence(1, 6, end=False)
                if r.random() < 0.05:
                    ans += "<br>"
                rows.append({"paragraph": para, "question": question, "answer": ans,
                             "idx": {"paragraph": p, "question": q, "answer": a},
                             "label": -1 if test else g.label(2)})
                a += 1
            q += 1
        p += 1
    return rows


def gen_record(g: Gen, n: int, test: bool, short: bool) -> list[dict]:
    r = g.r
    rows = []
    for k in range(n):
        names = r.sample(NAMES + ["Fran\u00e7ois", "Nguy\u1ec5n", "U.S.", "New York", "O'Neil"], r.randint(2, 5))
        parts = []
        for nm in names:
            parts.append(g.sentence(1, 4 if short else 10, odd_space=False, end=False) + f" {nm} "
                         + g.sentence(1, 4 if short else 10, odd_space=False))
        main = " ".join(parts)
        highlights = []
        for _ in range(r.randint(0, 4)):
            h = g.sentence(2, 5 if short else 10, odd_space=False, end=False)
            h += r.choice(["", "", ".", "?", "!", '"', "'", ",", ":"])
            highlights.append(h)
        passage = main
        for h in highlights:
            passage += "\n@highlight\n" + h
        if r.random() < 0.15 and highlights:
            passage = passage.replace("\n@highlight\n", "\n@highlight\n\n@highlight\n", 1)
        starts, ends, texts = [], [], []
        for nm in names:
            pos = passage.find(nm)
            texts.append(nm)
            starts.append(pos)
            ends.append(pos + len(nm) - 1)
        entities = sorted(set(names))
        query = g.sentence(2, 6 if short else 12, odd_space=False, end=False)
        qw = query.split(" ")
        qw.insert(r.randrange(len(qw) + 1), "@placeholder")
        query = " ".join(qw) + "."
        answers = [] if test else sorted(set(r.sample(names, r.choice([1, 1, 1, 2, 3][: len(names) + 1]))))
        rows.append({"passage": passage, "query": query, "entities": entities,
                     "entity_spans": {"text": texts, "start": starts, "end": ends},
                     "answers": answers, "idx": {"passage": k, "query": k}})
    return rows


def gen_squad(g: Gen, n: int, split: str, short: bool) -> list[dict]:
    r = g.r
    rows = []
    for _ in range(n):
        context = g.sentence(6 if short else 15, 14 if short else 60, rich=0.3)
        words = context.split(" ")
        answers = []
        for _ in range(1 if split == "train" else r.choice([1, 2, 3, 3, 4])):
            if answers and r.random() < 0.4:
                answers.append(answers[0])  # the validation split repeats answers
                continue
            i = r.randrange(len(words))
            ln = r.randint(1, min(4, len(words) - i))
            text = " ".join(words[i:i + ln]).strip()
            if not text:
                text = context.strip()[:5] or "x"
            answers.append(text)
        starts = [max(0, context.find(a)) for a in answers]
        rows.append({"id": g.hexid(24), "title": r.choice(NAMES + UNICODE[:6]) + "_" + r.choice(PLAIN),
                     "context": context,
                     "question": r.choice(QWORDS).capitalize() + " " + g.sentence(2, 10, rich=0.3, end=False) + "?",
                     "answers": {"text": answers, "answer_start": starts}})
    return rows


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema, r: random.Random, shards: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    cuts = sorted(r.sample(range(1, len(rows)), shards - 1)) if shards > 1 else []
    bounds = [0] + cuts + [len(rows)]
    files = []
    for s in range(shards):
        part = rows[bounds[s]:bounds[s + 1]]
        name = path.parent / f"{path.name}-{s:05d}-of-{shards:05d}.parquet"
        table = pa.Table.from_pylist(part, schema=schema)
        pq.write_table(table, name, compression=r.choice(["snappy", "snappy", "none"]),
                       row_group_size=max(1, r.randint(max(1, len(part) // 4), max(1, len(part)))))
        files.append(name)
    return files


def build(root: Path, g: Gen) -> dict:
    """Writes the hub cache under root/hub; returns {task: {published split: rows}} and snapshot dirs."""
    hub = root / "hub"
    snaps = {}
    for repo in ("nyu-mll/glue", "aps/super_glue", "rajpurkar/squad"):
        folder = hub / ("datasets--" + repo.replace("/", "--"))
        commit = g.hexid()
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
        (folder / "blobs").mkdir(exist_ok=True)
        snap = folder / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "README.md").write_text(f"---\npretty_name: synthetic {repo}\n---\n")
        snaps[repo] = snap
    data = {}
    for task, (repo, config, splits) in TASKS.items():
        data[task] = {}
        for split in splits:
            n = split_size(g, task, split)
            rows = gen_rows(g, task, split, n)
            data[task][split] = rows
            shards = 1 if g.r.random() < 0.75 else g.r.randint(2, 3)
            shards = min(shards, max(1, len(rows) - 1))
            write_parquet(snaps[repo] / config / split, rows, SCHEMAS[config], g.r, shards)
    return {"data": data, "snaps": snaps, "hub": hub}


# ----------------------------------------------------------------------------- DePT, restated

def seeded_perm(n: int) -> list[int]:
    gen = torch.Generator()
    gen.manual_seed(42)
    return torch.randperm(n, generator=gen).tolist()


def dept_split(task: str, split: str, data: dict) -> tuple[str, list[dict]]:
    """(published split, rows in DePT's order) for `split` of `task`."""
    if task == "mnli":
        src = {"train": "train", "validation": "validation_mismatched", "test": "validation_matched"}[split]
        return src, data[src]
    if task in SMALL:
        if split == "train":
            return "train", data["train"]
        rows = data["validation"]
        perm = seeded_perm(len(rows))
        half = len(rows) // 2
        idx = perm[:half] if split == "validation" else perm[half:]
        return "validation", [rows[i] for i in idx]
    # large: 1,000 train rows -> validation
    if split == "test":
        return "validation", data["validation"]
    rows = data["train"]
    perm = seeded_perm(len(rows))
    idx = perm[:1000] if split == "validation" else perm[1000:]
    return "train", [rows[i] for i in idx]


def t5_pad(text: str) -> str:
    # T5's _pad_punctuation, with the `regex` module's Unicode classes (DePT imports regex as re)
    spaced = regex.sub(r"([^_\s\p{N}\p{L}\p{M}])", r" \1 ", str(text))
    return regex.sub(r"\s+", " ", spaced)


def wsc_mark(text: str, span: str, index: int, mark: str) -> str:
    # DePT builds the pattern by substituting the span text in verbatim (no escaping).
    pat = r"^((?:\S+\s){" + str(index) + "})(" + span + ")"
    return regex.sub(pat, lambda m: f"{m.group(1)}{mark} {m.group(2)} {mark}", text)


def record_passage(p: str) -> str:
    p = regex.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", lambda m: m.group(1) + " ", p)
    return regex.sub(r"\n@highlight\n", ". ", p)


def multirc_clean(t: str) -> str:
    return regex.sub(r"<(/)?b>", "", regex.sub(r"<br>", " ", t))


def stsb_text(label: float) -> str:
    x = float(np.float32(label))  # the HF feature is float32; datasets hands it over as a Python float
    return str(np.round((x * 5) / 5, decimals=1))


def dept_format(task: str, row: dict) -> tuple[str, str]:
    j = " ".join
    if task == "record":
        src = (f"record query: {row['query']} entities: {', '.join(row['entities'])} "
               f"passage: {record_passage(row['passage'])}")
        return src, (row["answers"][0] if row["answers"] else "<unk>")
    if task == "squad":
        src = j(["question:", t5_pad(row["question"]), "context:", t5_pad(row["context"])])
        return src, t5_pad(row["answers"]["text"][0])
    fields = {
        "mnli": ["premise", "hypothesis"], "cb": ["premise", "hypothesis"],
        "qqp": ["question1", "question2"], "qnli": ["question", "sentence"],
        "sst2": ["sentence"], "cola": ["sentence"],
        "mrpc": ["sentence1", "sentence2"], "rte": ["sentence1", "sentence2"], "stsb": ["sentence1", "sentence2"],
        "boolq": ["question", "passage"], "wic": ["sentence1", "sentence2", "word"],
    }
    if task == "multirc":
        src = j(["question:", multirc_clean(row["question"]), "answer:", multirc_clean(row["answer"]),
                 "paragraph:", multirc_clean(row["paragraph"])])
    elif task == "wsc":
        text = wsc_mark(row["text"], row["span1_text"], row["span1_index"], "*")
        i2 = row["span2_index"] + (2 if row["span1_index"] < row["span2_index"] else 0)
        src = j(["text:", wsc_mark(text, row["span2_text"], i2, "#")])
    else:
        parts = []
        for f in fields[task]:
            parts += [f + ":", row[f]]
        src = j(parts)
    tgt = stsb_text(row["label"]) if task == "stsb" else str(row["label"])
    return src, tgt


# ----------------------------------------------------------------------------- running ept

def run_show(ept: str, task: str, split: str, data_dir: Path | None, env: dict) -> tuple[int, list, str]:
    cmd = [ept, "tasks", "show", task, "--split", split, "--json"]
    if data_dir is not None:
        cmd[4:4] = ["--data", str(data_dir)]
    p = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    rows = []
    if p.returncode == 0:
        # One JSON object per "\n"-terminated line; U+2028, U+0085 etc. may appear unescaped
        # inside strings, so no str.splitlines().
        for line in p.stdout.decode("utf-8").split("\n"):
            if line.strip():
                rows.append(json.loads(line))
    return p.returncode, rows, p.stderr.decode("utf-8", "replace").strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=9176, help="table generator seed (the split seed stays 42)")
    ap.add_argument("--ept", default=str(ROOT / "target" / "debug" / "ept"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir and print where it is")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    args = ap.parse_args()
    if not os.access(args.ept, os.X_OK):
        print(f"no ept binary at {args.ept}: run `cargo build` first", file=sys.stderr)
        return 2

    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="ept-show-check-"))
    try:
        g = Gen(args.seed)
        built = build(tmp, g)
        data, snaps = built["data"], built["snaps"]
        home = tmp / "home"
        home.mkdir()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        base_env.update(HOME=str(home), HF_DATASETS_CACHE=str(tmp / "no-datasets-cache"))
        env_data = dict(base_env, HF_HUB_CACHE=str(tmp / "no-hub-cache"))
        env_cache = dict(base_env, HF_HUB_CACHE=str(built["hub"]))

        jobs = []  # (task, split, mode)
        for task in TASKS:
            for split in ("train", "validation", "test"):
                jobs.append((task, split, "--data"))
            jobs.append((task, "validation", "cache"))

        def work(job):
            task, split, mode = job
            repo = TASKS[task][0]
            if mode == "--data":
                rc, rows, err = run_show(args.ept, task, split, snaps[repo], env_data)
            else:
                rc, rows, err = run_show(args.ept, task, split, None, env_cache)
            return job, rc, rows, err

        with cf.ThreadPoolExecutor(args.jobs) as ex:
            results = list(ex.map(work, jobs))

        table = []
        first = None
        failed = 0
        for (task, split, mode), rc, got, err in results:
            src_split, rows = dept_split(task, split, data[task])
            want = [dept_format(task, row) for row in rows]
            bad = 0
            if rc != 0:
                bad = max(1, len(want))
                if first is None:
                    first = dict(task=task, split=split, mode=mode, error=f"exit {rc}: {err}")
            else:
                for i in range(max(len(want), len(got))):
                    w = want[i] if i < len(want) else None
                    o = (got[i].get("source"), got[i].get("target")) if i < len(got) else None
                    if w != o:
                        bad += 1
                        if first is None:
                            first = dict(task=task, split=split, mode=mode, row=i, published_split=src_split,
                                         input_row=rows[i] if i < len(rows) else None,
                                         expected=None if w is None else {"source": w[0], "target": w[1]},
                                         got=None if o is None else {"source": o[0], "target": o[1]})
            failed += bad > 0
            table.append((task, split, mode, src_split, len(data[task][src_split]), len(want),
                          len(got), bad, rc))

        print(f"seed {args.seed}; tables in {tmp}{'' if args.keep else ' (removed at exit)'}")
        print(f"{'task':<8} {'split':<10} {'via':<6} {'published':<22} {'pub rows':>8} {'want':>5} "
              f"{'got':>5} {'mismatch':>8}")
        for task, split, mode, src, npub, nw, ng, bad, rc in table:
            via = "data" if mode == "--data" else "cache"
            flag = "" if bad == 0 else ("  <-- FAIL" if rc == 0 else f"  <-- exit {rc}")
            print(f"{task:<8} {split:<10} {via:<6} {src:<22} {npub:>8} {nw:>5} {ng:>5} {bad:>8}{flag}")
        total_rows = sum(t[5] for t in table)
        print(f"{len(table)} runs, {total_rows} rows compared, {failed} runs with mismatches "
              f"({time.time() - t0:.1f}s)")
        if first is not None:
            print("\nfirst mismatch:")
            print(json.dumps(first, indent=1, ensure_ascii=False))
        print("\nnotes (DePT's own code, not checked here):\n"
              "  * ReCoRD: DePT's preprocessor emits one row per gold answer for every split (train,\n"
              "    validation and test alike); `tasks show` prints the evaluation form, one row per query.\n"
              "  * SQuAD: DePT's Squad.preprocessor pads str(example['answers']) (the whole answers dict);\n"
              "    ept (and this check) use the first answer text, padded.")
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
