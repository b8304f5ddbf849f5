"""`report.md` of the demo: tables over seeds at a fixed stopping rule, at the (oracle) best epoch and
at matched utility, the paper's plots, and a forget question answered before and after."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from npo.eval.logs import load_log_dir


def _history(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "eval" / "history.jsonl").read_text().splitlines()]


def _summary(run: Path, epoch: int) -> dict:
    return json.loads((run / "eval" / f"epoch_{epoch:02d}" / "summary.json").read_text())


def collect(out: Path, settings) -> dict:
    """method -> {"epoch": [...], "mu": [[per seed] per epoch], "fq": ..., "rouge": ...}; plus the
    target (epoch 0) and retain models' numbers per seed."""
    curves, target_mu, retain = {}, {}, {}
    for method in settings.methods:
        per_seed = {s: _history(out / f"seed{s}" / method) for s in settings.seeds}
        epochs = [h["epoch"] for h in per_seed[settings.seeds[0]]]
        curves[method] = {
            "epoch": epochs,
            "mu": [[per_seed[s][i]["model_utility"] for s in settings.seeds] for i in range(len(epochs))],
            "fq": [[per_seed[s][i]["forget_quality"] for s in settings.seeds] for i in range(len(epochs))],
            "rouge": [[_summary(out / f"seed{s}" / method, e)["forget_rouge"] for s in settings.seeds] for e in epochs],
        }
        for s in settings.seeds:
            target_mu[s] = per_seed[s][0]["model_utility"]
    for s in settings.seeds:
        summary = json.loads((out / f"seed{s}" / "retain" / "eval" / "summary.json").read_text())
        retain[s] = summary
    first = curves[settings.methods[0]]
    return {"curves": curves, "target_mu": target_mu, "target_fq": dict(zip(settings.seeds, first["fq"][0], strict=True)),
            "retain": retain}


def _gmean(values) -> float:
    vals = [max(v, 1e-300) for v in values if v is not None]
    return float(np.exp(np.mean(np.log(vals)))) if vals else float("nan")


def _fq_text(values) -> str:
    return f"{_gmean(values):.3g} [{min(values):.2g}, {max(values):.2g}]"


def _mu_text(values, target) -> str:
    v = np.array(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std():.3f} | {v.mean() / np.mean(target):.2f}x"


def matched_per_seed(curve: dict, data: dict, settings) -> list[float | None]:
    """Per seed, the best Forget Quality among epochs (>= 1) keeping `matched_utility` of the target's
    Model Utility; None where no epoch does."""
    out = []
    for k, s in enumerate(settings.seeds):
        floor = settings.matched_utility * data["target_mu"][s]
        ok = [curve["fq"][e][k] for e in range(1, len(curve["fq"])) if curve["mu"][e][k] >= floor]
        out.append(max(ok) if ok else None)
    return out


def _per_seed_text(values) -> str:
    return ", ".join("none" if v is None else f"{v:.2g}" for v in values)


def _state(ratio: float, matched: float) -> str:
    return "collapsed" if ratio < 0.2 else "useful" if ratio >= matched else "degraded"


def _matched_line(curves: dict, data: dict, settings, ours: str, other: str) -> str:
    a, b = matched_per_seed(curves[ours], data, settings), matched_per_seed(curves[other], data, settings)
    wins = sum(1 for x, y in zip(a, b, strict=True) if x is not None and (y is None or x > y))
    ties = sum(1 for x, y in zip(a, b, strict=True) if x is not None and x == y)
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    ratio = _gmean([x for x, _ in both]) / _gmean([y for _, y in both]) if both else float("nan")
    line = (f"- At matched utility (the best epoch keeping >= {settings.matched_utility:.0%} of the target's Model "
            f"Utility, an oracle), {ours} beats {other} on {wins} of {len(a)} seeds ({ties} tied): per seed {ours} "
            f"[{_per_seed_text(a)}] vs {other} [{_per_seed_text(b)}]"
            + (f", geo-mean ratio {ratio:.2g}x." if both else "."))
    if all(y is None for y in b):
        line += f" No epoch of {other} keeps that much utility, so any forgetting {ours} does at it wins."
    return line


def findings(data: dict, settings, ours: str = "npo_rt", baseline: str = "ga") -> str:
    """The paper's claims, checked on this run's numbers: the target knows the forget set, gradient
    ascent collapses, NPO+RT forgets while staying useful, and at matched utility NPO+RT forgets better
    than GA (and GA+RT when it ran). Where the run cannot show a claim, the line says why. Empty unless
    `ours` and `baseline` both ran."""
    curves = data["curves"]
    if ours not in curves or baseline not in curves:
        return ""
    target = np.mean(list(data["target_mu"].values()))
    fq0 = [data["target_fq"][s] for s in settings.seeds]
    if max(fq0) < 0.01:
        first = (f"- The target knows the forget set: its Forget Quality is {_gmean(fq0):.2g} (geo-mean over "
                 "seeds; far below 0.05).")
    else:  # nothing for unlearning to restore on this measure
        first = (f"- The target does not stand apart from the retain model on the forget set: its Forget Quality "
                 f"is {_gmean(fq0):.2g} (geo-mean over seeds; not far below 0.05), so this setting cannot show "
                 "forgetting by Forget Quality: the KS test of the forget set's truth ratios does not tell the "
                 "target from a model that never saw it.")
    lines = [first]
    for m in (baseline, ours):
        mu, fq = np.array(curves[m]["mu"][-1], dtype=float), curves[m]["fq"][-1]
        ratios = mu / np.array([data["target_mu"][s] for s in settings.seeds])
        states = [_state(r, settings.matched_utility) for r in ratios]
        ratio = float(mu.mean() / target)
        counted = {k: states.count(k) for k in ("collapsed", "degraded", "useful") if k in states}
        lines.append(f"- {m} at the last epoch keeps {ratio:.1f}x of the target's Model Utility ("
                     + ", ".join(f"{k} on {v} of {len(states)} seeds" for k, v in counted.items())
                     + f") with Forget Quality {_gmean(fq):.2g}"
                     + (f", above 0.05 on {sum(v > 0.05 for v in fq)} of {len(fq)} seeds." if m == ours else "."))
    lines.append(_matched_line(curves, data, settings, ours, baseline))
    if "ga_rt" in curves and ours != "ga_rt":
        lines.append(_matched_line(curves, data, settings, ours, "ga_rt"))
    return "\n".join(["## What this run shows", "", *lines, ""])


def tables(data: dict, settings) -> str:
    seeds = settings.seeds
    target = [data["target_mu"][s] for s in seeds]
    head = ["| method | Model Utility (mean ± sd) | MU / target | Forget Quality (geo-mean [min, max]) | forget ROUGE-L |",
            "|---|---|---|---|---|"]
    retain_mu = [data["retain"][s]["model_utility"] for s in seeds]
    retain_rouge = np.mean([data["retain"][s]["forget_rouge"] for s in seeds])
    ref_rows = [f"| target (before unlearning) | {_mu_text(target, target)} | {_fq_text([data['target_fq'][s] for s in seeds])} | "
                f"{np.mean(data['curves'][settings.methods[0]]['rouge'][0]):.3f} |",
                f"| retain model (the ideal) | {_mu_text(retain_mu, target)} | 1 (by definition) | {retain_rouge:.3f} |"]
    last, best, matched = list(head) + ref_rows, list(head), []
    for method, c in data["curves"].items():
        mu, fq, rouge = np.array(c["mu"], dtype=float), c["fq"], np.array(c["rouge"], dtype=float)
        last.append(f"| {method} | {_mu_text(mu[-1], target)} | {_fq_text(fq[-1])} | {rouge[-1].mean():.3f} |")
        # oracle: per seed, the epoch (>= 1) with the highest Forget Quality
        idx = [max(range(1, len(fq)), key=lambda e, k=k: fq[e][k]) for k in range(len(seeds))]
        best.append(f"| {method} | {_mu_text([mu[e][k] for k, e in enumerate(idx)], target)} | "
                    f"{_fq_text([fq[e][k] for k, e in enumerate(idx)])} | "
                    f"{np.mean([rouge[e][k] for k, e in enumerate(idx)]):.3f} |")
        per_seed = matched_per_seed(c, data, settings)
        found = [v for v in per_seed if v is not None]
        matched.append(f"| {method} | {len(found)}/{len(seeds)} | " + (_fq_text(found) if found else "none")
                       + f" | {_per_seed_text(per_seed)} |")
    pct = int(settings.matched_utility * 100)
    return "\n".join([
        "### At a fixed stopping rule: the last epoch", "", *last, "",
        "### At the best epoch by Forget Quality (an oracle: choosing it uses the retain model)", "", *best, "",
        f"### At matched utility: the best Forget Quality among epochs keeping >= {pct}% of the target's Model "
        "Utility (also an oracle)", "",
        "| method | seeds with such an epoch | Forget Quality (geo-mean [min, max]) | per seed |", "|---|---|---|---|",
        *matched, ""])


def answers(out: Path, settings) -> str:
    """The first forget question the target answers word for word (ROUGE-L recall 1; the first question
    if none), answered by the target and by each method's last model."""
    seed = settings.seeds[0]
    last = len(_history(out / f"seed{seed}" / settings.methods[0])) - 1
    target = load_log_dir(out / f"seed{seed}" / settings.methods[0] / "eval" / "epoch_00", sets=("forget",))
    recall = target["forget"]["rougeL_recall"]
    item = next((i for i, r in enumerate(recall) if r >= 1.0), 0)
    prompt, gen, truth = target["forget"]["generated_text"][item]
    rows = ["| model | answer |", "|---|---|", f"| true answer | {truth} |", f"| target | {gen} |"]
    for method in settings.methods:
        logs = load_log_dir(out / f"seed{seed}" / method / "eval" / f"epoch_{last:02d}", sets=("forget",))
        rows.append(f"| {method} (epoch {last}) | {logs['forget']['generated_text'][item][1] or '(empty)'} |")
    question = prompt.replace("Question: ", "").replace("\nAnswer:", "").strip()
    return "\n".join([f"Forget question (seed {seed}): *{question}*", "", *rows, ""])


def probe_table(out: Path, settings) -> str:
    """Mean over seeds of each method's probes of the final model (see docs/probes.md)."""
    rows = ["| method | forget prob (target → unlearned) | Min-K% AUC forget vs holdout (retain model) | "
            "PrivLeak (Min-K%) | relearning recovers (prob) | int4 Δ forget prob | paraphrased-question prob |",
            "|---|---|---|---|---|---|---|"]
    for method in settings.methods:
        runs = [json.loads((out / f"seed{s}" / method / "probes" / "probes.json").read_text()) for s in settings.seeds]

        def mean(get, runs=runs):
            vals = [get(r) for r in runs]
            vals = [v for v in vals if isinstance(v, int | float)]
            return float(np.mean(vals)) if vals else None

        def f(v, fmt="{:.3f}"):
            return "n/a" if v is None else fmt.format(v)

        rows.append(
            f"| {method} | {f(mean(lambda r: r['forget']['reference']['prob']))} → "
            f"{f(mean(lambda r: r['forget']['model']['prob']))} | {f(mean(lambda r: r['mia']['auc']['model']['min_k']))} "
            f"({f(mean(lambda r: r['mia']['auc']['retain']['min_k']))}) | "
            f"{f(mean(lambda r: r['mia']['privleak']['min_k']), '{:+.1f}%')} | "
            f"{f(mean(lambda r: r['relearn']['recovered']['prob']), '{:.0%}')} | "
            f"{f(mean(lambda r: r['quant']['int4']['delta_prob']), '{:+.3f}')} | "
            f"{f(mean(lambda r: r['paraphrase']['model']['paraphrased']['prob']))} |")
    return "\n".join(rows + [""])


def _audit_section(out: Path, settings) -> list[str]:
    """The audit of the first seed's first method (npo audit; npo verify checks it)."""
    run = out / f"seed{settings.seeds[0]}" / settings.methods[0]
    text = (run / "audit" / "audit.md").read_text()
    verdict = next((x for x in text.splitlines() if x.startswith("**Verdict")), "")
    rel = (run / "audit").relative_to(out)
    return [f"## An audit of the deletion ({settings.methods[0]}, seed {settings.seeds[0]})", "",
            f"`npo audit` recorded the request with hashes of every item and model and checked the unlearned "
            f"model against the retain model on every criterion of docs/audit.md: [{rel}/audit.md]({rel}/audit.md) "
            f"(`npo verify {rel}` recomputes it).", "", verdict, ""]


def write_report(out: Path, settings, elapsed: float) -> Path:
    from npo.demo import regime
    from npo.plots import plot_methods

    data = collect(out, settings)
    regime_text, data["regime"] = regime.markdown(out, settings)
    target_mu = float(np.mean(list(data["target_mu"].values())))
    plot_methods(data["curves"], out / "curves.png", out / "tradeoff.png", target_mu=target_mu)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str))
    text = "\n".join([
        ("# npo demo: unlearning fictitious people from a tiny Llama" if not settings.base_model else
         f"# npo study: unlearning {settings.data} from {settings.base_model}"), "",
        f"{len(settings.seeds)} seed(s), methods {', '.join(settings.methods)}, {settings.forget_split} of "
        + (f"{settings.people} people x {settings.questions} questions" if not settings.data else settings.data)
        + "; fine-tuning " + (f"LoRA r={settings.finetune['lora_r']}" if settings.finetune.get("lora_r") else "full")
        + f" ({settings.target_epochs} epochs at lr {settings.target_lr}); every method {settings.unlearn_epochs} epochs at lr "
        f"{settings.unlearn_lr}, beta {settings.beta}. Forget Quality is the KS p-value against the retain "
        f"model's truth ratios (> 0.05: forgetting the test cannot tell from never having learned). "
        f"Took {elapsed / 60:.1f} minutes.", "",
        findings(data, settings),
        regime_text,
        tables(data, settings),
        "## Forget Quality and Model Utility per epoch (mean over seeds, band: min-max)", "",
        "![curves](curves.png)", "", "## Forget Quality against Model Utility", "", "![tradeoff](tradeoff.png)", "",
        "## A forget question before and after", "", answers(out, settings), "",
        *(_audit_section(out, settings) if settings.audit else []),
        *(["## Probes of the final models (mean over seeds; see docs/probes.md)", "",
           "Membership inference separates forget answers from answers about holdout people never trained on "
           "(AUC 0.5: no signal; the retain model's AUC in parentheses is what never having seen the data looks "
           "like); PrivLeak is the relative AUC gap to the retain model. Relearning fine-tunes on half of the "
           "forget set and measures how much of the target's probability comes back on the other half.", "",
           probe_table(out, settings)] if settings.probes else [])])
    path = out / "report.md"
    path.write_text(text)
    return path


def numbers_in(report: str) -> list[float]:
    """Every number in a report (for checks that they are finite)."""
    import re

    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+\.?\d*(?:e-?\d+)?", report) if not math.isnan(float(x))]
