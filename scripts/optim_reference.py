#!/usr/bin/env python3
"""Reference trajectories for Hugging Face's *old* `transformers.AdamW`.

    python scripts/optim_reference.py --out tests/fixtures/optim

writes <out>/adamw.json. `transformers.AdamW` was deprecated in 4.x and removed
in 5.x, so `OldHFAdamW` below re-implements its `step()` as it stood in
transformers v4.40.2 `src/transformers/optimization.py` (checked against that
file): per parameter, skip if `p.grad is None`; lazily create
state {step: 0, exp_avg: 0, exp_avg_sq: 0}; `state["step"] += 1`;

    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = exp_avg_sq.sqrt().add_(eps)
    step_size = lr
    if correct_bias:
        step_size = step_size * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    p.addcdiv_(exp_avg, denom, value=-step_size)
    if weight_decay > 0.0:
        p.add_(p, alpha=(-lr * weight_decay))

The learning rate comes from transformers' (still present)
`get_linear_schedule_with_warmup`, a `LambdaLR`: the step with 0-based index k
runs at `base_lr * lambda(k)`; gradients are clipped with
`torch.nn.utils.clip_grad_norm_(params, 1.0)` before each step. Everything is
f32 on CPU, single-threaded and seeded; the whole trajectory is recomputed in
float64 from the same gradients as a self-check. Values in the JSON are the
f32 numbers written as Python floats (`repr`, exact: parse as f64 and cast to
f32, or parse as f32 directly).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import OrderedDict

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch
from torch.optim import Optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20240601
BETAS = (0.9, 0.999)
EPS = 1e-6
MAX_GRAD_NORM = 1.0
NUM_WARMUP, NUM_TRAINING = 2, 6


class OldHFAdamW(Optimizer):
    """transformers.AdamW (v4.x) — same constructor defaults and the same `step`."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, correct_bias=True):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "correct_bias": correct_bias}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=(1.0 - beta1))
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"]
                if group["correct_bias"]:
                    bias_correction1 = 1.0 - beta1 ** state["step"]
                    bias_correction2 = 1.0 - beta2 ** state["step"]
                    step_size = step_size * math.sqrt(bias_correction2) / bias_correction1
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=(-group["lr"] * group["weight_decay"]))
        return loss


def linear_warmup_lambda(k: int) -> float:
    """transformers' _get_linear_schedule_with_warmup_lr_lambda, for the cross-check."""
    if k < NUM_WARMUP:
        return float(k) / float(max(1, NUM_WARMUP))
    return max(0.0, float(NUM_TRAINING - k) / float(max(1, NUM_TRAINING - NUM_WARMUP)))


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

# main: one parameter per group, named like its group
MAIN_GROUPS = [
    ("prompt", [4, 6], 0.3, 0.0),
    ("low-rank", [5, 3], 5e-3, 0.0),
    ("auxiliary", [2, 6], 0.1, 0.01),
]
# per-step scale of the N(0,1) gradients: the global norm lands both above and below 1
MAIN_GRAD_SCALES = [0.3, 0.05, 0.2, 0.08, 1.0, 0.1]

# skip: one group holding two parameters; "b" has no gradient at step 3
SKIP_GROUP = ("skip", 0.1, 0.01)
SKIP_PARAMS = [("a", [3]), ("b", [2, 2])]
SKIP_GRAD_SCALES = [0.4, 0.3, 0.5, 0.2, 0.6, 0.3]
SKIP_NONE = {3: {"b"}}


def run_scenario(param_specs, group_specs, grad_scales, none_at, seed):
    """param_specs: [(name, shape)]; group_specs: [(group_name, [param names], lr, wd)].
    Returns (record, f64 check inputs)."""
    from transformers import get_linear_schedule_with_warmup

    g = torch.Generator().manual_seed(seed)
    params = OrderedDict()
    for name, shape in param_specs:
        params[name] = torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.5)
    opt = OldHFAdamW(
        [{"params": [params[n] for n in names], "lr": lr, "weight_decay": wd}
         for (_, names, lr, wd) in group_specs],
        betas=BETAS, eps=EPS, correct_bias=True,
    )
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=NUM_WARMUP, num_training_steps=NUM_TRAINING)
    base_lrs = [lr for (_, _, lr, _) in group_specs]

    rec = OrderedDict()
    rec["params"] = [OrderedDict(name=n, shape=list(s)) for n, s in param_specs]
    rec["groups"] = [OrderedDict(name=gn, params=list(names), lr=lr, weight_decay=wd)
                     for (gn, names, lr, wd) in group_specs]
    rec["initial"] = OrderedDict((n, p.detach().tolist()) for n, p in params.items())
    steps = []
    for k, scale in enumerate(grad_scales):
        factor = linear_warmup_lambda(k)
        lrs = [pg["lr"] for pg in opt.param_groups]
        # LambdaLR sets lr = base_lr * lambda(k) before step k
        for lr, base in zip(lrs, base_lrs):
            assert lr == base * factor, (k, lr, base, factor)
        raw = OrderedDict()
        for n, p in params.items():
            gr = torch.randn(*p.shape, generator=g) * scale  # always drawn: RNG stream independent of None
            if n in none_at.get(k, ()):
                p.grad = None
                raw[n] = None
            else:
                p.grad = gr.clone()
                raw[n] = gr
        with_grad = [p for p in params.values() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(with_grad, MAX_GRAD_NORM)
        coef = torch.clamp(MAX_GRAD_NORM / (norm + 1e-6), max=1.0)
        clipped = OrderedDict((n, None if p.grad is None else p.grad.detach().clone()) for n, p in params.items())
        opt.step()
        sched.step()
        st = OrderedDict()
        st["step"] = k
        st["lr_factor"] = factor
        st["lr"] = OrderedDict((gs[0], lr) for gs, lr in zip(group_specs, lrs))
        st["grads"] = OrderedDict((n, None if v is None else v.tolist()) for n, v in raw.items())
        st["grad_norm"] = float(norm)
        st["clip_coef"] = float(coef)
        st["clipped_grads"] = OrderedDict((n, None if v is None else v.tolist()) for n, v in clipped.items())
        st["state_step"] = OrderedDict((n, opt.state[p]["step"] if p in opt.state else 0)
                                       for n, p in params.items())
        st["params"] = OrderedDict((n, p.detach().tolist()) for n, p in params.items())
        st["exp_avg"] = OrderedDict((n, opt.state[p]["exp_avg"].tolist() if p in opt.state else None)
                                    for n, p in params.items())
        st["exp_avg_sq"] = OrderedDict((n, opt.state[p]["exp_avg_sq"].tolist() if p in opt.state else None)
                                       for n, p in params.items())
        steps.append(st)
        for p in params.values():
            p.grad = None
    rec["steps"] = steps
    return rec


def f64_check(rec) -> float:
    """Replay the trajectory in float64 from the recorded raw gradients with
    independent code; return the worst relative deviation of params/moments."""
    import numpy as np

    b1, b2 = BETAS
    group_of = {}
    for gr in rec["groups"]:
        for n in gr["params"]:
            group_of[n] = gr
    p = {n: np.array(v, dtype=np.float64) for n, v in rec["initial"].items()}
    m = {n: np.zeros_like(v) for n, v in p.items()}
    v2 = {n: np.zeros_like(v) for n, v in p.items()}
    t = {n: 0 for n in p}
    worst = 0.0
    for st in rec["steps"]:
        grads = {n: (None if g is None else np.array(g, dtype=np.float64)) for n, g in st["grads"].items()}
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values() if g is not None))
        coef = min(1.0, MAX_GRAD_NORM / (norm + 1e-6))
        worst = max(worst, abs(norm - st["grad_norm"]) / norm)
        for n, g in grads.items():
            if g is None:
                continue
            gr = group_of[n]
            lr = gr["lr"] * linear_warmup_lambda(st["step"])
            g = g * coef
            t[n] += 1
            m[n] = b1 * m[n] + (1 - b1) * g
            v2[n] = b2 * v2[n] + (1 - b2) * g * g
            ss = lr * math.sqrt(1 - b2 ** t[n]) / (1 - b1 ** t[n])
            p[n] = p[n] - ss * m[n] / (np.sqrt(v2[n]) + EPS)
            p[n] = p[n] * (1 - lr * gr["weight_decay"])
        for key, ref in (("params", p), ("exp_avg", m), ("exp_avg_sq", v2)):
            for n, want in ref.items():
                got = st[key][n]
                if got is None:
                    assert t[n] == 0
                    continue
                got = np.array(got, dtype=np.float64)
                scale = max(np.abs(want).max(), 1e-30)
                worst = max(worst, float(np.abs(got - want).max() / scale))
        assert st["state_step"] == t, (st["state_step"], t)
    return worst


NOTES = [
    "Hugging Face's old transformers.AdamW (v4.x; removed in v5), step() as in transformers v4.40.2 "
    "src/transformers/optimization.py: exp_avg = b1*exp_avg + (1-b1)*g; exp_avg_sq = b2*exp_avg_sq + (1-b2)*g*g; "
    "denom = sqrt(exp_avg_sq) + eps (eps added BEFORE bias correction, unlike torch.optim.AdamW); "
    "step_size = lr*sqrt(1-b2^t)/(1-b1^t) computed in Python float64 (t = the PARAMETER's own state step, "
    "b^t with float ** int); p += -step_size * exp_avg / denom (torch addcdiv_, value cast to f32); then, only if "
    "weight_decay > 0, decoupled decay AFTER the update: p += (-lr*weight_decay) * p (lr = the scheduled lr, "
    "not step_size).",
    "A parameter whose .grad is None is skipped entirely: no moment update, no weight decay, and its "
    "state['step'] does not advance. The step count is PER PARAMETER, so after a skipped step that parameter's "
    "bias correction uses t-1 relative to the others (scenario 'skip', parameter 'b', step 3: state_step "
    "stays 3 at step index 3, and is 4 vs 5 for 'a' at step index 4). An optimiser with one global step "
    "counter gives different values for 'b' from step index 4 on.",
    "State is created lazily at the parameter's first non-None gradient (zeros); before that exp_avg/exp_avg_sq "
    "are null here and state_step is 0.",
    "LR schedule: transformers.get_linear_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6), a "
    "LambdaLR: the optimizer step with 0-based index k runs at base_lr * lambda(k), lambda(k) = k/2 for k < 2, "
    "else max(0, (6-k)/4): factors 0, 0.5, 1, 0.75, 0.5, 0.25. Step 0 has lr 0: parameters are unchanged but "
    "the moments ARE updated and state step becomes 1 (bias correction counts it). 'lr' holds the exact Python "
    "float base_lr*lambda(k) each group used.",
    "Clipping: torch.nn.utils.clip_grad_norm_(params with a grad, max_norm=1.0) before each step: total = L2 "
    "norm of the per-parameter L2 norms (f32), coef = min(1, 1.0/(total + 1e-6)) (f32), every grad multiplied "
    "by coef (a no-op when coef = 1). 'grad_norm' is the pre-clip total (returned value), 'clip_coef' the "
    "clamped coefficient, 'clipped_grads' what the optimiser saw. None grads are left out of the norm.",
    "'grads' are the raw gradients (N(0,1)*scale, seeded); 'params', 'exp_avg', 'exp_avg_sq' are AFTER the "
    "step; 'state_step' the per-parameter step counts after the step. All tensors are f32 written as exact "
    "Python floats; shapes as listed under 'params'.",
    "Self-check: the trajectory replayed in float64 by independent code agrees to 'f64_max_rel_dev' "
    "(max |f32 - f64| / max |f64| per tensor).",
]


def format_json(obj) -> str:
    """indent=1 JSON with innermost numeric lists kept on one line."""
    text = json.dumps(obj, indent=1)
    num = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    pat = re.compile(r"\[\s*(" + num + r"(?:,\s*" + num + r")*)\s*\]")
    return pat.sub(lambda mt: "[" + ", ".join(x.strip() for x in mt.group(1).split(",")) + "]", text) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "optim"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)

    main_rec = run_scenario(
        [(n, s) for (n, s, _, _) in MAIN_GROUPS],
        [(n, [n], lr, wd) for (n, _, lr, wd) in MAIN_GROUPS],
        MAIN_GRAD_SCALES, {}, SEED,
    )
    skip_rec = run_scenario(
        SKIP_PARAMS,
        [(SKIP_GROUP[0], [n for n, _ in SKIP_PARAMS], SKIP_GROUP[1], SKIP_GROUP[2])],
        SKIP_GRAD_SCALES, SKIP_NONE, SEED + 1,
    )
    # the skipped parameter really was left alone at step 3
    s2, s3 = skip_rec["steps"][2], skip_rec["steps"][3]
    assert s3["params"]["b"] == s2["params"]["b"] and s3["exp_avg"]["b"] == s2["exp_avg"]["b"]
    assert s3["state_step"] == {"a": 4, "b": 3}
    assert skip_rec["steps"][4]["state_step"] == {"a": 5, "b": 4}
    clipped = [st["clip_coef"] < 1.0 for st in main_rec["steps"]]
    assert any(clipped) and not all(clipped), clipped

    worst = max(f64_check(main_rec), f64_check(skip_rec))
    assert worst < 1e-5, worst

    out = OrderedDict()
    out["optimizer"] = "transformers.AdamW (old, v4.x semantics)"
    out["hyper"] = OrderedDict(betas=list(BETAS), eps=EPS, correct_bias=True, max_grad_norm=MAX_GRAD_NORM,
                               schedule="linear_with_warmup", num_warmup_steps=NUM_WARMUP,
                               num_training_steps=NUM_TRAINING)
    out["notes"] = NOTES
    out["f64_max_rel_dev"] = worst
    out["scenarios"] = OrderedDict(main=main_rec, skip=skip_rec)
    path = os.path.join(args.out, "adamw.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(format_json(out))
    for name, rec in out["scenarios"].items():
        print(name, "norms", [round(st["grad_norm"], 4) for st in rec["steps"]],
              "coefs", [round(st["clip_coef"], 4) for st in rec["steps"]])
    print(f"wrote {path} ({os.path.getsize(path)} bytes), f64 max rel dev {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
