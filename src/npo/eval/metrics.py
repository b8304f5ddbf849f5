"""TOFU aggregates from per-item statistics (SPEC §5): pure numpy/scipy, no model, no torch.

Formulas follow the published leaderboard code, not TOFU's in-trainer variant: the truth ratio uses
the *geometric* mean of the perturbed answers' length-normalised probabilities.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import hmean, ks_2samp

from npo.errors import NpoError
from npo.eval.logs import SET_NAMES

UTILITY_SETS = ("retain", "real_authors", "world_facts")  # Model Utility never looks at the forget set
NORMALISED_PROB_SETS = ("real_authors", "world_facts")  # sets scored against their perturbed answers
METRIC_NAMES: tuple[str, ...] = tuple(
    f"{s}_{m}" for s in SET_NAMES for m in ("prob", "rouge", "truth_ratio"))
UTILITY_METRICS: tuple[str, ...] = tuple(n for n in METRIC_NAMES if n.startswith(UTILITY_SETS))


def item_probabilities(avg_losses: Sequence) -> np.ndarray:
    """p = exp(-avg_loss): the per-token (length-normalised) probability of each answer."""
    return np.exp(-np.asarray(avg_losses, dtype=np.float64))


def probability(avg_gt_loss: Sequence, avg_perturb_loss: Sequence | None = None) -> float:
    """Mean p(answer); with perturbed losses, mean p / (p + Σ_j p_perturbed_j) as for real authors/world
    facts, where the base model already knows the answer and only the margin over wrong ones matters."""
    p = item_probabilities(avg_gt_loss)
    if avg_perturb_loss is None:
        return float(p.mean())
    wrong = item_probabilities(avg_perturb_loss).sum(axis=-1)
    return float((p / (p + wrong)).mean())


def rouge(rougeL_recall: Sequence) -> float:
    """Mean ROUGE-L recall of the greedy generations against the answers."""
    return float(np.mean(np.asarray(rougeL_recall, dtype=np.float64)))


def truth_ratios(avg_paraphrased_loss: Sequence, avg_perturb_loss: Sequence) -> np.ndarray:
    """r_i = exp(mean_j perturb_loss_ij - paraphrased_loss_i): p(base answer) over the geometric mean of
    p(perturbed answers). r > 1: the model prefers the true answer."""
    perturbed = np.asarray(avg_perturb_loss, dtype=np.float64).mean(axis=-1)
    with np.errstate(over="ignore"):
        return np.exp(perturbed - np.asarray(avg_paraphrased_loss, dtype=np.float64))


def truth_ratio_score(ratios: Sequence, forget: bool) -> float:
    """mean min(r, 1/r) on the forget set (1 = no preference either way, what a never-trained model
    shows); mean max(0, 1 - 1/r) elsewhere (higher = prefers the truth more)."""
    r = np.asarray(ratios, dtype=np.float64)
    with np.errstate(divide="ignore"):  # r = 0 or inf (a collapsed model) still gives a score in [0, 1]
        scores = np.minimum(r, 1.0 / r) if forget else np.maximum(0.0, 1.0 - 1.0 / r)
    return float(scores.mean())


def model_utility(values: Iterable[float]) -> float:
    """Harmonic mean of the 9 utility numbers: one collapsed number drags the whole score down."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size != len(UTILITY_METRICS):
        raise NpoError(f"model utility needs {len(UTILITY_METRICS)} numbers, got {values.size}")
    return float(hmean(values))


def forget_quality(ratios: Sequence, retain_ratios: Sequence) -> float:
    """p-value of the two-sample KS test between the forget-set truth ratios of the evaluated model and
    of the model retrained without the forget set: high = indistinguishable from never having learnt."""
    return float(ks_2samp(np.asarray(ratios, dtype=np.float64),
                          np.asarray(retain_ratios, dtype=np.float64)).pvalue)


def set_metrics(log: Mapping[str, Sequence], set_name: str) -> dict[str, float]:
    """Probability, ROUGE and Truth Ratio of one eval set, keyed `{set_name}_{prob,rouge,truth_ratio}`."""
    if set_name not in SET_NAMES:
        raise NpoError(f"unknown eval set '{set_name}'; expected one of {list(SET_NAMES)}")
    perturb = log["average_perturb_loss"]
    ratios = truth_ratios(log["avg_paraphrased_loss"], perturb)
    return {
        f"{set_name}_prob": probability(log["avg_gt_loss"],
                                        perturb if set_name in NORMALISED_PROB_SETS else None),
        f"{set_name}_rouge": rouge(log["rougeL_recall"]),
        f"{set_name}_truth_ratio": truth_ratio_score(ratios, forget=set_name == "forget"),
    }


def _source(log: object) -> str:
    return getattr(log, "source", "<memory>")


def tofu_metrics(logs: Mapping[str, Mapping[str, Sequence]],
                 retain_logs: Mapping[str, Mapping[str, Sequence]] | None = None) -> dict:
    """The 12 metrics, model_utility and forget_quality from the four eval logs of one model.

    `retain_logs` needs only "forget": the retain model's forget log. Without it forget_quality is None
    and forget_quality_reason says why. Item counts of the two forget logs must match: a KS p-value
    from different sample sizes is not comparable with published ones (apply one protocol to both).
    """
    missing = [s for s in SET_NAMES if s not in logs]
    if missing:
        raise NpoError(f"missing eval set(s) {missing}; TOFU metrics need {list(SET_NAMES)}")
    out: dict = {}
    for name in SET_NAMES:
        out.update(set_metrics(logs[name], name))
    out["model_utility"] = model_utility(out[k] for k in UTILITY_METRICS)
    out["items"] = {name: len(logs[name]["avg_gt_loss"]) for name in SET_NAMES}
    if retain_logs is None or "forget" not in retain_logs:
        out["forget_quality"] = None
        out["forget_quality_reason"] = ("no retain-model forget log given: Forget Quality compares with "
                                        "a model trained on the retain set only")
        return out
    forget, reference = logs["forget"], retain_logs["forget"]
    n, n_ref = len(forget["avg_gt_loss"]), len(reference["avg_gt_loss"])
    if n != n_ref:
        raise NpoError(f"forget log has {n} items ({_source(forget)}) but the retain model's forget log has "
                       f"{n_ref} ({_source(reference)}); evaluate the same forget split under the same "
                       f"protocol (the published retain logs hold the first 300 items: legacy300)")
    out["retain_forget_items"] = n_ref
    out["forget_quality"] = forget_quality(
        truth_ratios(forget["avg_paraphrased_loss"], forget["average_perturb_loss"]),
        truth_ratios(reference["avg_paraphrased_loss"], reference["average_perturb_loss"]))
    return out


def rouge_recalls(generations: Sequence[str], answers: Sequence[str]) -> tuple[list[float], list[float]]:
    """ROUGE-1 and ROUGE-L recall of each generation, reference = the ground-truth answer (stemmed),
    as TOFU computes them: recall, because a longer correct generation should not be penalised."""
    if len(generations) != len(answers):
        raise NpoError(f"rouge: {len(generations)} generations but {len(answers)} answers")
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    scores = [scorer.score(answer, generation) for generation, answer in zip(generations, answers, strict=True)]
    return [s["rouge1"].recall for s in scores], [s["rougeL"].recall for s in scores]
