"""From per-item numbers to point estimates with bootstrap intervals, then verdicts: pure, no model.

`analyse(items, logs, settings)` is what `npo audit` writes to results.json and what `npo verify`
recomputes. Measure names read `role.set.key`: role before / after / retain, set forget / holdout /
held (the forget items held back from relearning), key as in collect.py; `prob` is the per-token
probability of the true answer, exp(LOSS score).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, ks_2samp

from npo.audit import verdicts
from npo.audit.bootstrap import bootstrap, nanmean
from npo.audit.settings import AuditSettings
from npo.eval.logs import SET_NAMES
from npo.eval.metrics import (
    UTILITY_SETS,
    model_utility,
    probability,
    rouge,
    truth_ratio_score,
    truth_ratios,
)
from npo.probes import mia
from npo.probes.robustness import recovered

ROLES = ("before", "after", "retain")


def jsonable(x):
    """NaN and infinities -> None, numpy floats -> float, recursively: results.json stays strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    return x


def arrays(items: dict) -> dict:
    """items.json's lists as float arrays (None -> NaN), plus `prob` = exp(LOSS score)."""
    out = {}
    for role, sets in items["scores"].items():
        out[role] = {}
        for name, cols in sets.items():
            a = {k: np.array([np.nan if v is None else v for v in col], dtype=np.float64) for k, col in cols.items()}
            a["prob"] = np.exp(a["loss"])
            out[role][name] = a
    return out


def tail_share(forget: np.ndarray, holdout: np.ndarray, q: float) -> float:
    """Share of forget items whose score is below the q-quantile of the holdout scores: about q for a
    model to which both are unseen, more when the forget answers were pushed below never-seen ones."""
    return float(np.mean(forget < np.quantile(holdout, q)))


def _tofu_role(log: dict, seed: int, n: int, level: float, role: str) -> dict:
    """The 12 TOFU metrics and Model Utility of one model, each with its interval (items of each eval set
    resampled; Model Utility resamples the three utility sets together)."""
    cols = {}
    for name in SET_NAMES:
        lg = log[name]
        cols[name] = {"avg": np.asarray(lg["avg_gt_loss"], dtype=np.float64),
                      "perturb": np.asarray(lg["average_perturb_loss"], dtype=np.float64),
                      "rouge": np.asarray(lg["rougeL_recall"], dtype=np.float64),
                      "ratio": truth_ratios(lg["avg_paraphrased_loss"], lg["average_perturb_loss"])}

    def metric(name: str, kind: str, idx: np.ndarray) -> float:
        c = cols[name]
        if kind == "prob":
            return probability(c["avg"][idx], c["perturb"][idx] if name in ("real_authors", "world_facts") else None)
        if kind == "rouge":
            return rouge(c["rouge"][idx])
        return truth_ratio_score(c["ratio"][idx], forget=name == "forget")

    out = {}
    for name in SET_NAMES:
        for kind in ("prob", "rouge", "truth_ratio"):
            out[f"{name}_{kind}"] = bootstrap(lambda i, name=name, kind=kind: metric(name, kind, i[name]),
                                              {name: len(cols[name]["avg"])}, name=f"tofu.{role}.{name}_{kind}",
                                              seed=seed, n_resamples=n, level=level).to_dict()
    utility = [(u, k) for u in UTILITY_SETS for k in ("prob", "rouge", "truth_ratio")]
    out["model_utility"] = bootstrap(lambda i: model_utility(metric(u, k, i[u]) for u, k in utility),
                                     {u: len(cols[u]["avg"]) for u in UTILITY_SETS},
                                     name=f"tofu.{role}.model_utility", seed=seed, n_resamples=n, level=level).to_dict()
    out["_ratios"] = cols["forget"]["ratio"]
    return out


def tofu_section(logs: dict, s: AuditSettings) -> dict:
    """Per role the TOFU metrics with intervals; with a retain model, Forget Quality (and the KS
    statistic) of before and after against it, forget items resampled in pairs."""
    out = {role: _tofu_role(log, s.seed, s.resamples, s.level, role) for role, log in logs.items()}
    ratios = {role: out[role].pop("_ratios") for role in out}
    if "retain" in logs:
        n = len(ratios["retain"])
        for role in ("before", "after"):
            a, r = ratios[role], ratios["retain"]
            out[role]["forget_quality"] = bootstrap(
                lambda i, a=a, r=r: float(ks_2samp(a[i["forget"]], r[i["forget"]]).pvalue), {"forget": n},
                name=f"tofu.{role}.forget_quality", seed=s.seed, n_resamples=s.resamples, level=s.level).to_dict()
            out[role]["ks_statistic"] = bootstrap(
                lambda i, a=a, r=r: float(ks_2samp(a[i["forget"]], r[i["forget"]]).statistic), {"forget": n},
                name=f"tofu.{role}.ks_statistic", seed=s.seed, n_resamples=s.resamples, level=s.level).to_dict()
    return out


def _mean(x: np.ndarray, group: str, name: str, s: AuditSettings) -> dict:
    return bootstrap(lambda i: nanmean(x[i[group]]), {group: len(x)}, name=name, seed=s.seed,
                     n_resamples=s.resamples, level=s.level).to_dict() | {"n_items": int(np.isfinite(x).sum())}


def probe_measures(a: dict, split: dict | None, s: AuditSettings) -> dict:
    measures: dict[str, dict] = {}
    mean_keys = ["prob", "paraphrase_prob", "paraphrase_rouge_l", "jailbreak_prob", "jailbreak_rouge_l",
                 "multiple_choice_share", "multiple_choice_top", "fill_blank_share", "fill_blank_top",
                 *(f"q{b}_{m}" for b in s.quant_bits for m in ("prob", "rouge_l"))]
    for role, sets in a.items():
        for name in ("forget", "holdout"):
            for key in mean_keys:
                if key in sets[name]:
                    measures[f"{role}.{name}.{key}"] = _mean(sets[name][key], name, f"{role}.{name}.{key}", s)
        f, h = sets["forget"], sets["holdout"]
        sizes = {"forget": len(f["loss"]), "holdout": len(h["loss"])}
        for attack in mia.ATTACKS:
            measures[f"{role}.auc.{attack}"] = bootstrap(
                lambda i, x=f[attack], y=h[attack]: mia.auroc(x[i["forget"]], y[i["holdout"]]), sizes,
                name=f"{role}.auc.{attack}", seed=s.seed, n_resamples=s.resamples, level=s.level).to_dict()
        measures[f"{role}.trace"] = bootstrap(
            lambda i, x=f["loss"], y=h["loss"]: tail_share(x[i["forget"]], y[i["holdout"]], s.tail), sizes,
            name=f"{role}.trace", seed=s.seed, n_resamples=s.resamples, level=s.level).to_dict()
        k = int(round(measures[f"{role}.trace"]["value"] * sizes["forget"]))
        measures[f"{role}.trace"]["binomial_p"] = float(binomtest(k, sizes["forget"], s.tail, alternative="greater").pvalue)
    if split is not None:
        held = np.asarray(split["held"], dtype=int)
        for role in ("after", "retain"):
            if role in a and "relearned_prob" in a[role]["forget"]:
                for key in ("relearned_prob", "relearned_rouge_l", "prob"):
                    if key in a[role]["forget"]:
                        measures[f"{role}.held.{key}"] = _mean(a[role]["forget"][key][held], "held",
                                                               f"{role}.held.{key}", s)
                measures[f"{role}.holdout.relearned_prob"] = _mean(a[role]["holdout"]["relearned_prob"], "holdout",
                                                                   f"{role}.holdout.relearned_prob", s)
        measures["before.held.prob"] = _mean(a["before"]["forget"]["prob"][held], "held", "before.held.prob", s)
        x, y, z = (a["after"]["forget"]["prob"][held], a["after"]["forget"]["relearned_prob"][held],
                   a["before"]["forget"]["prob"][held])
        measures["after.recovered"] = bootstrap(
            lambda i: recovered(float(x[i["held"]].mean()), float(y[i["held"]].mean()), float(z[i["held"]].mean())),
            {"held": len(held)}, name="after.recovered", seed=s.seed, n_resamples=s.resamples, level=s.level).to_dict()
    return measures


def analyse(items: dict, logs: dict, s: AuditSettings) -> dict:
    """results.json: TOFU metrics, probe measures, verdicts and the overall verdict."""
    tofu = tofu_section(logs, s)
    measures = probe_measures(arrays(items), items.get("relearn_split"), s)
    has_retain = "retain" in items["scores"]
    found = verdicts.judge(measures, tofu, s, has_retain)
    return {"tofu": tofu, "measures": measures, "verdicts": found, "overall": verdicts.overall(found),
            "reference": "retain model" if has_retain else "holdout items (no retain model given)"}
