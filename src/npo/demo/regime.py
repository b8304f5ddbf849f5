"""How far unlearning has to move the forget answers, on the testbed and on TOFU: the quantities that
decide whether NPO differs from gradient ascent (SPEC section 3: NPO's gradient is GA's weighted by
W = 2 sigmoid(beta (logp - logp_ref)), which vanishes as an answer's log-prob falls below the
reference's). Read from the per-item eval logs every epoch writes (`gt_loss` is an answer's summed
NLL), so nothing extra is logged during training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npo.eval.logs import load_log_dir

# TOFU forget10 on Llama-2-7b, from the published per-item logs: the fine-tuned model's summed NLL of a
# forget answer (median, TOFU's full-model log), and a retain90 model's (the NPO authors' log, in
# shared/data/tofu_retain_logs: median 97.12 nats over a median 42 tokens, 2.29 nats per token)
TOFU = {"target_nll": 0.3, "retain_nll": 97.12, "tokens": 42, "retain_nll_per_token": 2.29}


def weight(delta: float | np.ndarray, beta: float):
    """NPO's W = 2 sigmoid(beta delta) for delta = logp - logp_ref."""
    return 2.0 / (1.0 + np.exp(-beta * np.asarray(delta, dtype=np.float64)))


def _forget_nll(eval_dir: Path) -> np.ndarray:
    return np.asarray(load_log_dir(eval_dir, sets=("forget",))["forget"]["gt_loss"], dtype=np.float64)


def measure(out: Path, settings, method: str) -> dict:
    """Per seed: the target's and the retain model's forget-answer NLLs, and per epoch of `method`
    the median NLL and median per-answer W against the target (the reference)."""
    per_seed = {}
    for s in settings.seeds:
        runs = out / f"seed{s}" / method / "eval"
        target = _forget_nll(runs / "epoch_00")
        tokens = np.asarray(load_log_dir(runs / "epoch_00", sets=("forget",))["forget"]["num_token_gt"])
        retain = _forget_nll(out / f"seed{s}" / "retain" / "eval")
        epochs = sorted(int(p.name.split("_")[1]) for p in runs.glob("epoch_*"))
        nll = [_forget_nll(runs / f"epoch_{e:02d}") for e in epochs]
        per_seed[s] = {
            "target_nll": float(np.median(target)), "retain_nll": float(np.median(retain)),
            "tokens": float(np.median(tokens)), "retain_nll_per_token": float(retain.sum() / tokens.sum()),
            "w_at_retain": float(np.median(weight(target - retain, settings.beta))),
            "epoch_nll": [float(np.median(x)) for x in nll],
            "epoch_w": [float(np.median(weight(target - x, settings.beta))) for x in nll]}
    return per_seed


def markdown(out: Path, settings) -> tuple[str, dict]:
    """The section of the report, and its numbers (for results.json)."""
    methods = [m for m in ("npo_rt", "npo", "ga", "ga_rt") if m in settings.methods] or list(settings.methods)
    data = {m: measure(out, settings, m) for m in methods}
    first = data[methods[0]]

    def mean(key):
        return float(np.mean([v[key] for v in first.values()]))

    w_tofu = float(weight(TOFU["target_nll"] - TOFU["retain_nll"], settings.beta))
    rows = ["| | summed NLL of a forget answer: target | retain model | tokens | retain model, per token | "
            f"NPO's W at the retain model's level (beta {settings.beta:g}) |", "|---|---|---|---|---|---|",
            f"| TOFU forget10, Llama-2-7b | {TOFU['target_nll']} | {TOFU['retain_nll']:.1f} | {TOFU['tokens']} | "
            f"{TOFU['retain_nll_per_token']:.2f} | {w_tofu:.1e} |",
            f"| this run ({settings.forget_split}, mean of per-seed medians) | {mean('target_nll'):.2f} | "
            f"{mean('retain_nll'):.1f} | {mean('tokens'):.0f} | {mean('retain_nll_per_token'):.2f} | "
            f"{mean('w_at_retain'):.2g} |"]
    epochs = len(first[settings.seeds[0]]["epoch_nll"])
    head = "| epoch | " + " | ".join(f"{m}: NLL, W" for m in methods) + " |"
    table = [head, "|" + "---|" * (len(methods) + 1)]
    for e in range(epochs):
        cells = []
        for m in methods:
            nll = np.mean([v["epoch_nll"][e] for v in data[m].values()])
            w = np.mean([v["epoch_w"][e] for v in data[m].values()])
            cells.append(f"{nll:.1f}, {w:.2g}")
        table.append(f"| {e} | " + " | ".join(cells) + " |")
    level = mean("retain_nll")
    text = "\n".join([
        "## How far the forget answers must move", "",
        "NPO's gradient is gradient ascent's weighted by W = 2σ(β(log p − log p_ref)), which falls towards 0 "
        "as an answer's log-probability drops below the target's. Whether that brake engages before an answer "
        "reaches the level of a model that never saw it is what separates NPO from GA: on TOFU the gap is about "
        f"{TOFU['retain_nll'] - TOFU['target_nll']:.0f} nats and W is {w_tofu:.0e} there; here it is "
        f"{level - mean('target_nll'):.0f} nats and W {mean('w_at_retain'):.2g}.", "", *rows, "",
        f"Median summed NLL of the forget answers and median W per epoch (mean over seeds; the retain model's "
        f"level is {level:.1f}; NLL far above it is overshoot):", "", *table, ""])
    return text, data
