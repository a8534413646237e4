#!/usr/bin/env python3
"""Writes the reference fixtures the Rust tests of ept's data layer compare against.

    pip install torch scikit-learn scipy pyarrow pandas
    python scripts/make_data_fixtures.py            # writes tests/fixtures/

* randperm.json — torch.randperm(n, generator=manual_seed(42)) for every size that DePT's split
  rules shuffle (METHOD.md §5), plus small n: first 32 elements and an order-sensitive checksum.
* metrics.json  — scikit-learn / scipy values for the metrics, including edge cases.
* tables/       — tiny synthetic tables (text written here, never copied from a real data set) in
  every on-disk layout the readers understand.

Everything is deterministic; rerunning the script must leave `git diff` empty.
"""

import collections
import json
import math
import os
import re
import string
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")

# Original sizes of the splits that DePT shuffles (Table 4 of EPT = these split by DePT's rules).
RANDPERM_SIZES = {
    # small sets: validation split in half
    "rte.validation": 277,
    "cola.validation": 1043,
    "mrpc.validation": 408,
    "stsb.validation": 1500,
    "cb.validation": 56,
    "multirc.validation": 4848,
    "wic.validation": 638,
    "wsc.validation": 104,
    "boolq.validation": 3270,
    # large sets: 1,000 train rows become validation
    "qqp.train": 363846,
    "qnli.train": 104743,
    "sst2.train": 67349,
    "record.train": 100730,
    "squad.train": 87599,
}


def checksum(perm):
    mod = 1 << 61
    acc = 0
    for i, p in enumerate(perm):
        acc = (acc + (i + 1) * p) % mod
    return acc


def make_randperm():
    import torch

    cases = []
    sizes = [(f"n={n}", n) for n in list(range(0, 21)) + [31, 32, 33, 100, 623, 624, 625, 1000, 1249]]
    sizes += list(RANDPERM_SIZES.items())
    for name, n in sizes:
        for seed in ([42, 0, 1234] if n <= 1000 else [42]):
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(n, generator=g).tolist()
            cases.append(
                {"name": name, "n": n, "seed": seed, "head": perm[:32], "checksum": checksum(perm)}
            )
    return {"torch_version": torch.__version__, "cases": cases}


def write_json(name, obj):
    path = os.path.join(FIX, name)
    # One case per line: small, diffable, and still plain JSON.
    with open(path, "w") as f:
        f.write("{\n")
        items = sorted(obj.items())
        for k, (key, value) in enumerate(items):
            sep = "," if k + 1 < len(items) else ""
            if isinstance(value, list):
                f.write(f" {json.dumps(key)}: [\n")
                for j, v in enumerate(value):
                    comma = "," if j + 1 < len(value) else ""
                    f.write(f"  {json.dumps(v, sort_keys=True)}{comma}\n")
                f.write(f" ]{sep}\n")
            else:
                f.write(f" {json.dumps(key)}: {json.dumps(value, sort_keys=True)}{sep}\n")
        f.write("}\n")
    print("wrote", os.path.relpath(path))


# ---------------------------------------------------------------- metrics
# DePT's metric definitions, restated here on top of scikit-learn / SciPy.


def _to_float(s, default=-1.0):
    try:
        return float(s)
    except ValueError:
        return default


def _nan0(x):
    return 0.0 if math.isnan(x) else float(x)


def ref_accuracy(p, t):
    return 100.0 * sum(a == b for a, b in zip(p, t)) / len(p)


def ref_f1_invalid(p, t):
    from sklearn.metrics import f1_score

    fixed = [(("0" if tt == "1" else "1") if pp not in ("0", "1") else pp) for pp, tt in zip(p, t)]
    return 100.0 * f1_score([int(x) for x in t], [int(x) for x in fixed], zero_division=0)


def ref_macro_f1(p, t, labels):
    from sklearn.metrics import fbeta_score

    return 100.0 * fbeta_score(t, p, beta=1, labels=labels, average="macro", zero_division=0)


def ref_mcc(p, t):
    from sklearn.metrics import matthews_corrcoef

    return 100.0 * matthews_corrcoef(t, p)


def ref_pearson(p, t):
    from scipy.stats import pearsonr

    x = [_to_float(v) for v in t]
    y = [_to_float(v) for v in p]
    return _nan0(100.0 * pearsonr(x, y)[0])


def ref_spearman(p, t):
    from scipy.stats import spearmanr

    x = [_to_float(v) for v in t]
    y = [_to_float(v) for v in p]
    return _nan0(100.0 * spearmanr(x, y)[0])


def ref_group_em(p, t, groups):
    by = {}
    for pp, tt, g in zip(p, t, groups):
        by.setdefault(g, []).append(pp == tt)
    return 100.0 * sum(all(v) for v in by.values()) / len(by)


def _norm(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _tok_f1(p, g):
    pt, gt = p.split(), g.split()
    same = sum((collections.Counter(pt) & collections.Counter(gt)).values())
    if same == 0:
        return 0.0
    pr, rc = same / len(pt), same / len(gt)
    return 2 * pr * rc / (pr + rc)


def ref_squad(p, answers):
    em = [max(float(_norm(pp) == _norm(g)) for g in gs) for pp, gs in zip(p, answers)]
    f1 = [max(_tok_f1(_norm(pp), _norm(g)) for g in gs) for pp, gs in zip(p, answers)]
    return 100.0 * sum(em) / len(em), 100.0 * sum(f1) / len(f1)


def task_case(name, task, preds, targets, answers=None, groups=None):
    p = [x.strip() for x in preds]
    t = [x.strip() for x in targets]
    binary = ["0", "1"]
    if task in ("rte", "sst2", "mnli", "qnli", "boolq", "wic", "wsc"):
        exp = {"accuracy": ref_accuracy(p, t)}
    elif task in ("mrpc", "qqp"):
        exp = {"accuracy": ref_accuracy(p, t), "f1": ref_f1_invalid(p, t)}
    elif task == "cola":
        exp = {"matthews_correlation": ref_mcc(p, t)}
    elif task == "stsb":
        exp = {"pearson": ref_pearson(p, t), "spearmanr": ref_spearman(p, t)}
    elif task == "cb":
        exp = {"f1_multiclass": ref_macro_f1(p, t, ["0", "1", "2"]), "accuracy": ref_accuracy(p, t)}
    elif task == "multirc":
        exp = {"f1": ref_f1_invalid(p, t), "em": ref_group_em(p, t, groups)}
    elif task in ("record", "squad"):
        em, f1 = ref_squad(p, answers)
        exp = {"em": em, "f1": f1}
    else:
        raise ValueError(task)
    del binary
    case = {"name": name, "task": task, "predictions": preds, "targets": targets, "expected": exp}
    if answers is not None:
        case["answers"] = answers
    if groups is not None:
        case["groups"] = groups
    return case


def make_metrics():
    import random
    import warnings

    import scipy
    import sklearn

    warnings.simplefilter("ignore")
    rng = random.Random(1234)
    cases = []
    add = cases.append
    # classification accuracy, invalid predictions are simply wrong
    add(task_case("rte basic", "rte", ["0", "1", "1", "maybe", " 0 "], ["0", "1", "0", "1", "0"]))
    add(task_case("mrpc invalid", "mrpc", ["1", "x", "0", "1", "", "1"], ["1", "1", "0", "0", "0", "1"]))
    add(task_case("qqp no positives", "qqp", ["0", "0", "0"], ["0", "0", "0"]))
    add(task_case("qqp all invalid", "qqp", ["a", "b", "c", "d"], ["0", "1", "1", "0"]))
    # MCC
    add(task_case("cola basic", "cola", ["1", "0", "1", "1", "0", "0"], ["1", "0", "0", "1", "1", "0"]))
    add(task_case("cola constant", "cola", ["1"] * 6, ["1", "0", "0", "1", "1", "0"]))
    add(task_case("cola invalid", "cola", ["1", "yes", "1", "2", "0", "0"], ["1", "0", "0", "1", "1", "0"]))
    add(task_case("cola perfect", "cola", ["1", "0", "1"], ["1", "0", "1"]))
    # STS-B
    add(task_case("stsb basic", "stsb", ["3.8", "1.2", "4.0", "0.4", "2.2"], ["4.0", "1.0", "3.8", "0.0", "2.6"]))
    add(task_case("stsb ties", "stsb", ["3.0", "3.0", "1.0", "5.0", "1.0", "2.2"], ["2.0", "3.0", "1.0", "5.0", "1.2", "2.0"]))
    add(task_case("stsb unparsable", "stsb", ["3.8", "high", "4.0", "", "2.2"], ["4.0", "1.0", "3.8", "0.0", "2.6"]))
    add(task_case("stsb constant", "stsb", ["2.0"] * 5, ["4.0", "1.0", "3.8", "0.0", "2.6"]))
    add(task_case("stsb nan", "stsb", ["nan", "1.0", "2.0"], ["4.0", "1.0", "3.8"]))
    # CB macro-F1 over 3 classes, a class never predicted, invalid predictions
    add(task_case("cb basic", "cb", ["0", "1", "2", "0", "1", "2", "0"], ["0", "1", "2", "1", "1", "0", "0"]))
    add(task_case("cb invalid", "cb", ["0", "none", "0", "0", "1", "9"], ["0", "1", "2", "0", "1", "2"]))
    add(task_case("cb missing class", "cb", ["0", "1", "0", "1"], ["0", "1", "1", "1"]))
    # MultiRC F1 + EM per question
    add(task_case("multirc", "multirc", ["1", "0", "1", "x", "0", "1", "1"], ["1", "0", "0", "1", "0", "1", "1"],
                  groups=[1, 1, 2, 2, 3, 3, 4]))
    # SQuAD / ReCoRD
    add(task_case("squad", "squad",
                  ["the Denver Broncos", "1990 ,", "an apple", "Paris", "", "blue cat"],
                  ["Denver Broncos", "1990", "apple pie", "London", "x", "the cat is blue"],
                  answers=[["Denver Broncos", "Broncos"], ["in 1990", "1990"], ["apple pie"], ["London"], ["x"], ["the cat is blue", "cat"]]))
    add(task_case("record", "record",
                  ["Obama", "New York", "Mr. Smith"],
                  ["Barack Obama", "NYC", "Smith"],
                  answers=[["Barack Obama", "Obama"], ["NYC"], ["Smith", "John Smith"]]))
    # random larger cases
    for k in range(3):
        n = 200
        t = [rng.choice(["0", "1"]) for _ in range(n)]
        p = [tt if rng.random() < 0.7 else rng.choice(["0", "1", "2", "junk"]) for tt in t]
        add(task_case(f"cola random {k}", "cola", p, t))
        add(task_case(f"mrpc random {k}", "mrpc", p, t))
        t3 = [rng.choice(["0", "1", "2"]) for _ in range(n)]
        p3 = [tt if rng.random() < 0.6 else rng.choice(["0", "1", "2", "?"]) for tt in t3]
        add(task_case(f"cb random {k}", "cb", p3, t3))
        ts = [f"{rng.randint(0, 25) * 0.2:.1f}" for _ in range(n)]
        ps = [f"{min(5.0, max(0.0, float(x) + rng.gauss(0, 1))):.1f}" if rng.random() < 0.95 else "??" for x in ts]
        add(task_case(f"stsb random {k}", "stsb", ps, ts))
    return {"sklearn": sklearn.__version__, "scipy": scipy.__version__, "cases": cases}


# ---------------------------------------------------------------- tables
# Synthetic rows (invented here) in the HF column layout of each task, with edge cases for the
# formatter: accents and combining marks, markup, @highlight joins, spans next to punctuation,
# STS-B scores that round differently in f32 and f64.

GLUE_ROWS = {
    "rte": [
        {"sentence1": "The cat sat on the mat.", "sentence2": "A cat sat.", "label": 0},
        {"sentence1": "Rain fell all day in Oslo.", "sentence2": "It was dry.", "label": 1},
        {"sentence1": "Fran\u00e7ois bought bread.", "sentence2": "Someone bought bread.", "label": 0},
        {"sentence1": "Tabs\tand  spaces stay.", "sentence2": "Yes.", "label": 1},
        {"sentence1": "Last train row.", "sentence2": "Row.", "label": 0},
    ],
    "rte_validation": [
        {"sentence1": f"Validation premise number {i}.", "sentence2": f"Claim {i}.", "label": i % 2}
        for i in range(6)
    ],
    "mnli_train": [
        {"premise": "Dogs bark loudly.", "hypothesis": "Dogs make noise.", "label": 0},
        {"premise": "Birds sing.", "hypothesis": "Birds are silent.", "label": 2},
    ],
    "mnli_validation_matched": [
        {"premise": "Matched premise one.", "hypothesis": "Matched one.", "label": 1},
        {"premise": "Matched premise two.", "hypothesis": "Matched two.", "label": 2},
    ],
    "mnli_validation_mismatched": [
        {"premise": "Mismatched premise.", "hypothesis": "Other.", "label": 0},
        {"premise": "Mismatched again.", "hypothesis": "Again.", "label": 1},
        {"premise": "Third mismatched.", "hypothesis": "Third.", "label": 2},
    ],
    "stsb_validation": [
        {"sentence1": "A man plays guitar.", "sentence2": "A man plays music.", "label": 3.75},
        {"sentence1": "Two kids run.", "sentence2": "Children are running.", "label": 1.05},
        {"sentence1": "Same.", "sentence2": "Same.", "label": 5.0},
        {"sentence1": "Nothing alike.", "sentence2": "Different things.", "label": 0.0},
        {"sentence1": "Half way.", "sentence2": "Midpoint.", "label": 2.25},
        {"sentence1": "Close call.", "sentence2": "Near miss.", "label": 4.349999904632568},
    ],
}

SUPERGLUE_ROWS = {
    "cb_train": [
        {"premise": "She said it might rain.", "hypothesis": "It will rain.", "label": 2},
        {"premise": "He knew the door was locked.", "hypothesis": "The door was locked.", "label": 0},
        {"premise": "They doubted the plan worked.", "hypothesis": "The plan worked.", "label": 1},
    ],
    "cb_validation": [
        {"premise": f"Validation CB premise {i}.", "hypothesis": f"H{i}.", "label": i % 3} for i in range(4)
    ],
    "record_train": [
        {
            "passage": "Alpha Corp opened a plant in Brightville.\n@highlight\nThe plant employs 300\n@highlight\nBrightville's mayor welcomed it!\n@highlight\nOpening \"soon\"",
            "query": "@placeholder said the plant would grow.",
            "entities": ["Alpha Corp", "Brightville"],
            "entity_spans": {"text": ["Alpha Corp", "Brightville"], "start": [0, 29], "end": [9, 39]},
            "answers": ["Alpha Corp", "Brightville"],
        },
        {
            "passage": "Beta Ltd met Gamma Inc.",
            "query": "@placeholder met Gamma Inc.",
            "entities": ["Beta Ltd", "Gamma Inc"],
            "entity_spans": {"text": ["Beta Ltd", "Gamma Inc"], "start": [0, 13], "end": [7, 21]},
            "answers": ["Beta Ltd"],
        },
    ],
    "wsc_validation": [
        {"text": "Mark told Pete many lies about himself, which Pete included in his book.",
         "span1_index": 0, "span2_index": 6, "span1_text": "Mark", "span2_text": "himself", "label": 1},
        {"text": "The trophy doesn't fit into the brown suitcase because it is too large.",
         "span1_index": 0, "span2_index": 9, "span1_text": "The trophy", "span2_text": "it", "label": 1},
        {"text": "Mr. Smith thanked Bob because he had helped.",
         "span1_index": 0, "span2_index": 5, "span1_text": "Mr. Smith", "span2_text": "he", "label": 1},
        {"text": "Joan thanked Susan for the help she had given.",
         "span1_index": 2, "span2_index": 7, "span1_text": "Susan", "span2_text": "she", "label": 0},
    ],
    "multirc_validation": [
        {"paragraph": "<b>Sent 1: </b>Ann baked bread.<br><b>Sent 2: </b>Ben ate it.<br>", "question": "Who baked?",
         "answer": "Ann", "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 1},
        {"paragraph": "<b>Sent 1: </b>Ann baked bread.<br><b>Sent 2: </b>Ben ate it.<br>", "question": "Who baked?",
         "answer": "Ben", "idx": {"paragraph": 0, "question": 0, "answer": 1}, "label": 0},
        {"paragraph": "<b>Sent 1: </b>Ann baked bread.<br><b>Sent 2: </b>Ben ate it.<br>", "question": "Who ate?",
         "answer": "Ben", "idx": {"paragraph": 0, "question": 1, "answer": 2}, "label": 1},
    ],
    "boolq_train": [
        {"question": "is the sky blue", "passage": "The sky looks blue by day.", "idx": 0, "label": 1},
        {"question": "do fish fly", "passage": "Most fish swim.", "idx": 1, "label": 0},
    ],
}

SQUAD_ROWS = [
    {"id": "q1", "title": "Caf\u00e9", "context": "The caf\u00e9 opened in 1990, near the river's edge.",
     "question": "When did the caf\u00e9 open?",
     "answers": {"text": ["1990", "in 1990"], "answer_start": [20, 17]}},
    {"id": "q2", "title": "Re\u0301sume\u0301", "context": "A re\u0301sume\u0301 (CV) lists jobs; e.g. \"chef\".",
     "question": "What does a CV list?", "answers": {"text": ["jobs"], "answer_start": [27]}},
]


def pad_punctuation(text):
    import regex

    text = regex.sub(r"([^_\s\p{N}\p{L}\p{M}])", r" \1 ", str(text))
    return regex.sub(r"\s+", " ", text)


def _mark_span(text, span, idx, mark):
    import regex

    pattern = "^((?:\\S+\\s){%d})(%s)" % (idx, regex.escape(span))
    return regex.sub(pattern, r"\1%s \2 %s" % (mark, mark), text)


def ref_format(task, row, train=True):
    """Expected (source, target, answers, group) list: DePT's formatting, restated."""
    j = " ".join
    if task in ("rte", "mrpc", "stsb"):
        src = j(["sentence1:", row["sentence1"], "sentence2:", row["sentence2"]])
    elif task in ("mnli", "cb"):
        src = j(["premise:", row["premise"], "hypothesis:", row["hypothesis"]])
    elif task == "boolq":
        src = j(["question:", row["question"], "passage:", row["passage"]])
    elif task == "multirc":
        rm = lambda t: re.sub("<(/)?b>", "", re.sub("<br>", " ", t))
        src = j(["question:", rm(row["question"]), "answer:", rm(row["answer"]), "paragraph:", rm(row["paragraph"])])
        g = (row["idx"]["paragraph"] << 32) | row["idx"]["question"]
        return [(src, str(row["label"]), [str(row["label"])], g)]
    elif task == "wsc":
        text = _mark_span(row["text"], row["span1_text"], row["span1_index"], "*")
        i2 = row["span2_index"] + 2 * int(row["span1_index"] < row["span2_index"])
        text = _mark_span(text, row["span2_text"], i2, "#")
        src = j(["text:", text])
    elif task == "record":
        p = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", row["passage"])
        p = re.sub(r"\n@highlight\n", ". ", p)
        src = f"record query: {row['query']} entities: {', '.join(row['entities'])} passage: {p}"
        ans = list(row["answers"])
        if train:
            return [(src, a, ans, None) for a in ans]
        return [(src, ans[0], ans, None)]
    elif task == "squad":
        ans = [pad_punctuation(a) for a in row["answers"]["text"]]
        src = j(["question:", pad_punctuation(row["question"]), "context:", pad_punctuation(row["context"])])
        return [(src, ans[0], ans, None)]
    else:
        raise ValueError(task)
    if task == "stsb":
        import numpy as np

        label = float(np.float32(row["label"]))
        tgt = str(np.round((label * 5) / 5, decimals=1))
    else:
        tgt = str(row["label"])
    return [(src, tgt, [tgt], None)]


def _write_parquet(path, rows, schema):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="snappy")


def _write_stream(path, rows, schema):
    import pyarrow as pa

    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    with pa.OSFile(path, "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as w:
            # Two batches, as the datasets writer produces for larger tables.
            for batch in table.to_batches(max_chunksize=max(1, (len(rows) + 1) // 2)):
                w.write_batch(batch)


def _schemas():
    import pyarrow as pa

    s, i64, i32, f32 = pa.string(), pa.int64(), pa.int32(), pa.float32()
    return {
        "pair": pa.schema([("sentence1", s), ("sentence2", s), ("label", i64), ("idx", i32)]),
        "stsb": pa.schema([("sentence1", s), ("sentence2", s), ("label", f32), ("idx", i32)]),
        "nli": pa.schema([("premise", s), ("hypothesis", s), ("label", i64), ("idx", i32)]),
        "record": pa.schema([
            ("passage", s), ("query", s), ("entities", pa.list_(s)),
            ("entity_spans", pa.struct([("text", pa.list_(s)), ("start", pa.list_(i32)), ("end", pa.list_(i32))])),
            ("answers", pa.list_(s)), ("idx", pa.struct([("passage", i32), ("query", i32)])),
        ]),
        "wsc": pa.schema([("text", s), ("span1_index", i32), ("span2_index", i32), ("span1_text", s),
                          ("span2_text", s), ("idx", i32), ("label", i64)]),
        "multirc": pa.schema([("paragraph", s), ("question", s), ("answer", s),
                              ("idx", pa.struct([("paragraph", i32), ("question", i32), ("answer", i32)])),
                              ("label", i64)]),
        "boolq": pa.schema([("question", s), ("passage", s), ("idx", i32), ("label", i64)]),
        "squad": pa.schema([("id", s), ("title", s), ("context", s), ("question", s),
                            ("answers", pa.struct([("text", pa.list_(s)), ("answer_start", pa.list_(i32))]))]),
    }


def _with_idx(rows, key="idx"):
    out = []
    for k, r in enumerate(rows):
        r = dict(r)
        r.setdefault(key, k)
        out.append(r)
    return out


def make_tables(root):
    import shutil

    if os.path.isdir(root):
        shutil.rmtree(root)
    sc = _schemas()
    expected = []

    def expect(name, task, files, rows, train=True):
        exs = []
        for r in rows:
            exs += [{"source": a, "target": b, "answers": c, "group": d} for a, b, c, d in ref_format(task, r, train)]
        expected.append({"name": name, "task": task, "files": files, "rows": len(rows), "examples": exs,
                         "purpose": "train" if train else "eval"})

    # 1. hub parquet layout, refs/main, a sharded train split, MNLI's two validation splits
    hub = os.path.join(root, "hub")
    glue = os.path.join(hub, "datasets--nyu-mll--glue")
    snap = os.path.join(glue, "snapshots", "0123abcd")
    os.makedirs(os.path.join(glue, "refs"), exist_ok=True)
    with open(os.path.join(glue, "refs", "main"), "w") as f:
        f.write("0123abcd")
    rte = _with_idx(GLUE_ROWS["rte"])
    _write_parquet(os.path.join(snap, "rte", "train-00000-of-00002.parquet"), rte[:3], sc["pair"])
    _write_parquet(os.path.join(snap, "rte", "train-00001-of-00002.parquet"), rte[3:], sc["pair"])
    expect("hub rte train", "rte", ["rte/train-00000-of-00002.parquet", "rte/train-00001-of-00002.parquet"], rte)
    rv = _with_idx(GLUE_ROWS["rte_validation"])
    _write_parquet(os.path.join(snap, "rte", "validation-00000-of-00001.parquet"), rv, sc["pair"])
    expect("hub rte validation", "rte", ["rte/validation-00000-of-00001.parquet"], rv)
    for split in ("train", "validation_matched", "validation_mismatched"):
        rows = _with_idx(GLUE_ROWS["mnli_" + split])
        _write_parquet(os.path.join(snap, "mnli", f"{split}-00000-of-00001.parquet"), rows, sc["nli"])
        expect(f"hub mnli {split}", "mnli", [f"mnli/{split}-00000-of-00001.parquet"], rows)
    sv = _with_idx(GLUE_ROWS["stsb_validation"])
    _write_parquet(os.path.join(snap, "stsb", "validation-00000-of-00001.parquet"), sv, sc["stsb"])
    expect("hub stsb validation", "stsb", ["stsb/validation-00000-of-00001.parquet"], sv)

    # 2. refs/convert/parquet layout, in the hub cache under aps/super_glue
    sg = os.path.join(hub, "datasets--aps--super_glue")
    os.makedirs(os.path.join(sg, "refs", "refs", "convert"), exist_ok=True)
    with open(os.path.join(sg, "refs", "refs", "convert", "parquet"), "w") as f:
        f.write("feed0001")
    ssnap = os.path.join(sg, "snapshots", "feed0001")
    for split in ("train", "validation"):
        rows = _with_idx(SUPERGLUE_ROWS["cb_" + split])
        _write_parquet(os.path.join(ssnap, "cb", split, "0000.parquet"), rows, sc["nli"])
        expect(f"convert cb {split}", "cb", [f"cb/{split}/0000.parquet"], rows)
    rec = [dict(r, idx={"passage": k, "query": k}) for k, r in enumerate(SUPERGLUE_ROWS["record_train"])]
    _write_parquet(os.path.join(ssnap, "record", "train", "0000.parquet"), rec, sc["record"])
    expect("convert record train", "record", ["record/train/0000.parquet"], rec, train=True)
    expect("convert record train eval", "record", ["record/train/0000.parquet"], rec, train=False)
    wsc = _with_idx(SUPERGLUE_ROWS["wsc_validation"])
    _write_parquet(os.path.join(ssnap, "wsc.fixed", "validation", "0000.parquet"), wsc, sc["wsc"])
    expect("convert wsc validation", "wsc", ["wsc.fixed/validation/0000.parquet"], wsc)

    # SQuAD in hub layout under rajpurkar/squad
    sq = os.path.join(hub, "datasets--rajpurkar--squad")
    os.makedirs(os.path.join(sq, "refs"), exist_ok=True)
    with open(os.path.join(sq, "refs", "main"), "w") as f:
        f.write("c0ffee")
    _write_parquet(os.path.join(sq, "snapshots", "c0ffee", "plain_text", "validation-00000-of-00001.parquet"),
                   SQUAD_ROWS, sc["squad"])
    expect("hub squad validation", "squad", ["plain_text/validation-00000-of-00001.parquet"], SQUAD_ROWS)

    # 3. datasets cache: {name}/{config}/{version}/{hash}/{name}-{split}.arrow (IPC stream)
    mr = SUPERGLUE_ROWS["multirc_validation"]
    _write_stream(os.path.join(root, "cache", "super_glue", "multirc", "1.0.3", "abcdef0123",
                               "super_glue-validation.arrow"), mr, sc["multirc"])
    expect("cache multirc validation", "multirc", ["multirc/1.0.3/abcdef0123/super_glue-validation.arrow"], mr)

    # 4. save_to_disk folder
    saved = os.path.join(root, "saved_boolq")
    bq = SUPERGLUE_ROWS["boolq_train"]
    _write_stream(os.path.join(saved, "train", "data-00000-of-00001.arrow"), bq, sc["boolq"])
    with open(os.path.join(saved, "train", "state.json"), "w") as f:
        json.dump({"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": "train"}, f)
    with open(os.path.join(saved, "train", "dataset_info.json"), "w") as f:
        json.dump({"features": {}}, f)
    with open(os.path.join(saved, "dataset_dict.json"), "w") as f:
        json.dump({"splits": ["train"]}, f)
    expect("saved boolq train", "boolq", ["train/data-00000-of-00001.arrow"], bq)

    # 5. GLUE TSV (labels spelled out for RTE; CoLA without a header)
    tsv = os.path.join(root, "glue")
    os.makedirs(os.path.join(tsv, "RTE"), exist_ok=True)
    with open(os.path.join(tsv, "RTE", "dev.tsv"), "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n")
        for k, r in enumerate(GLUE_ROWS["rte_validation"]):
            f.write(f"{k}\t{r['sentence1']}\t{r['sentence2']}\t{['entailment', 'not_entailment'][r['label']]}\n")
    expect("tsv rte dev", "rte", ["RTE/dev.tsv"], GLUE_ROWS["rte_validation"])
    os.makedirs(os.path.join(tsv, "CoLA"), exist_ok=True)
    cola = [("gj04", 1, "Our friends won't buy this analysis."), ("gj04", 0, "Buy won't friends this.")]
    with open(os.path.join(tsv, "CoLA", "train.tsv"), "w") as f:
        for src, lab, sent in cola:
            f.write(f"{src}\t{lab}\t{'' if lab else '*'}\t{sent}\n")
    expected.append({"name": "tsv cola train", "task": "cola", "files": ["CoLA/train.tsv"], "rows": 2,
                     "examples": [{"source": f"sentence: {t}", "target": str(l), "answers": [str(l)], "group": None}
                                  for _, l, t in cola]})
    os.makedirs(os.path.join(tsv, "MRPC"), exist_ok=True)
    with open(os.path.join(tsv, "MRPC", "train.tsv"), "w") as f:
        f.write("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\tHe left early.\tHe departed early.\n")
    expected.append({"name": "tsv mrpc train", "task": "mrpc", "files": ["MRPC/train.tsv"], "rows": 1,
                     "examples": [{"source": "sentence1: He left early. sentence2: He departed early.",
                                   "target": "1", "answers": ["1"], "group": None}]})

    # 6. SuperGLUE's original JSONL (nested MultiRC, ReCoRD, WSC; spelled-out / boolean labels)
    sgj = os.path.join(root, "superglue")
    os.makedirs(os.path.join(sgj, "MultiRC"), exist_ok=True)
    para = mr[0]["paragraph"]
    with open(os.path.join(sgj, "MultiRC", "val.jsonl"), "w") as f:
        f.write(json.dumps({"idx": 0, "version": 1.1, "passage": {"text": para, "questions": [
            {"question": "Who baked?", "idx": 0, "answers": [{"text": "Ann", "idx": 0, "label": 1},
                                                             {"text": "Ben", "idx": 1, "label": 0}]},
            {"question": "Who ate?", "idx": 1, "answers": [{"text": "Ben", "idx": 2, "label": 1}]}]}}) + "\n")
    expect("jsonl multirc val", "multirc", ["MultiRC/val.jsonl"], mr)
    os.makedirs(os.path.join(sgj, "ReCoRD"), exist_ok=True)
    r0 = SUPERGLUE_ROWS["record_train"][0]
    ents = [{"start": s0, "end": e0} for s0, e0 in zip(r0["entity_spans"]["start"], r0["entity_spans"]["end"])]
    with open(os.path.join(sgj, "ReCoRD", "train.jsonl"), "w") as f:
        f.write(json.dumps({"idx": 0, "passage": {"text": r0["passage"], "entities": ents + ents[:1]},
                            "qas": [{"query": r0["query"], "idx": 0,
                                     "answers": [{"start": 29, "end": 39, "text": "Brightville"},
                                                 {"start": 0, "end": 9, "text": "Alpha Corp"}]}]}) + "\n")
    expect("jsonl record train", "record", ["ReCoRD/train.jsonl"], [r0])
    os.makedirs(os.path.join(sgj, "WSC"), exist_ok=True)
    with open(os.path.join(sgj, "WSC", "val.jsonl"), "w") as f:
        for k, r in enumerate(wsc):
            tgt = {kk: r[kk] for kk in ("span1_index", "span2_index", "span1_text", "span2_text")}
            f.write(json.dumps({"text": r["text"], "target": tgt, "idx": k, "label": bool(r["label"])}) + "\n")
    expect("jsonl wsc val", "wsc", ["WSC/val.jsonl"], wsc)
    os.makedirs(os.path.join(sgj, "CB"), exist_ok=True)
    with open(os.path.join(sgj, "CB", "train.jsonl"), "w") as f:
        for k, r in enumerate(SUPERGLUE_ROWS["cb_train"]):
            name = ["entailment", "contradiction", "neutral"][r["label"]]
            f.write(json.dumps({"premise": r["premise"], "hypothesis": r["hypothesis"], "label": name, "idx": k}) + "\n")
    expect("jsonl cb train", "cb", ["CB/train.jsonl"], SUPERGLUE_ROWS["cb_train"])

    # SQuAD's original single-document JSON (dev-v1.1.json style)
    os.makedirs(os.path.join(root, "squad_json"), exist_ok=True)
    doc = {"version": "1.1", "data": [{"title": r["title"], "paragraphs": [{"context": r["context"], "qas": [
        {"id": r["id"], "question": r["question"],
         "answers": [{"text": t, "answer_start": a} for t, a in zip(r["answers"]["text"], r["answers"]["answer_start"])]}]}]}
        for r in SQUAD_ROWS]}
    with open(os.path.join(root, "squad_json", "validation.json"), "w") as f:
        json.dump(doc, f)
    expect("json squad validation", "squad", ["validation.json"], SQUAD_ROWS)

    # 7. a user's own source/target file
    os.makedirs(os.path.join(root, "user"), exist_ok=True)
    with open(os.path.join(root, "user", "train.jsonl"), "w") as f:
        f.write(json.dumps({"source": "translate: hello", "target": "bonjour"}) + "\n\n")
        f.write(json.dumps({"source": "q: 2+2?", "target": "4", "answers": ["4", "four"], "group": 3}) + "\n")

    # 8. broken files
    bad = os.path.join(root, "bad")
    os.makedirs(bad, exist_ok=True)
    with open(os.path.join(bad, "nonutf8.jsonl"), "wb") as f:
        f.write(b'{"source": "ok", "target": "1"}\n{"source": "caf\xe9", "target": "0"}\n')
    open(os.path.join(bad, "empty.jsonl"), "w").close()
    open(os.path.join(bad, "empty.tsv"), "w").close()
    open(os.path.join(bad, "empty.parquet"), "w").close()
    with open(os.path.join(bad, "badjson.jsonl"), "w") as f:
        f.write('{"source": "a", "target": "1"}\n{"source": "b", "target": }\n')
    with open(os.path.join(bad, "short.tsv"), "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n0\tonly one field\n")
    with open(os.path.join(bad, "notparquet.parquet"), "w") as f:
        f.write("this is not parquet")
    with open(os.path.join(bad, "notarrow.arrow"), "w") as f:
        f.write("this is not arrow either")
    with open(os.path.join(bad, "nosource.jsonl"), "w") as f:
        f.write(json.dumps({"text": "a", "target": "1"}) + "\n")
    _write_parquet(os.path.join(bad, "rte_badlabel", "rte", "validation-00000-of-00001.parquet"),
                   [{"sentence1": "a", "sentence2": "b", "label": 7, "idx": 0}], sc["pair"])
    _write_parquet(os.path.join(bad, "rte_nocol", "rte", "validation-00000-of-00001.parquet"),
                   [{"sentence1": "a", "label": 0}], __import__("pyarrow").schema(
                       [("sentence1", __import__("pyarrow").string()), ("label", __import__("pyarrow").int64())]))

    with open(os.path.join(root, "expected.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(e, sort_keys=True, ensure_ascii=False) for e in expected) + "\n]\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(root) for n in ns)
    print(f"wrote {os.path.relpath(root)} ({total} bytes)")


def main():
    os.makedirs(FIX, exist_ok=True)
    what = sys.argv[1:] or ["randperm", "metrics", "tables"]
    if "randperm" in what:
        write_json("randperm.json", make_randperm())
    if "metrics" in what:
        write_json("metrics.json", make_metrics())
    if "tables" in what:
        make_tables(os.path.join(FIX, "tables"))


if __name__ == "__main__":
    main()
