"""Membership inference on the forget set: do the model's likelihoods still tell forget answers
(members) from answers it never saw (holdout, non-members)?

Attack scores follow one convention, higher = more likely a member, so a model that memorised the
forget set shows AUC > 0.5 and a model that never saw it ~0.5:

- LOSS (Yeom et al. 2018): the mean token log-prob of the answer (minus the loss);
- zlib (Carlini et al. 2021): that mean log-prob divided by the zlib-compressed length of the answer
  text, which discounts answers that are likely merely because they are simple;
- Min-K% (Shi et al. 2024): the mean of the lowest k% token log-probs (the surprising tokens carry
  the membership signal; the easy ones are likely either way);
- Min-K%++ (Zhang et al. 2024): the same on (log p - mu) / sigma, each token's log-prob standardised
  by the mean and spread of log p under the model's next-token distribution.

PrivLeak (MUSE, Shi et al. 2024) compares an unlearned model's AUC with that of a model retrained
without the forget set: (AUC - AUC_retain) / AUC_retain x 100; ~0 is the goal, > 0 means the forget
set still leaks, < 0 means over-unlearning (forget answers now look *less* familiar than unseen ones).

Everything here is a pure function of arrays except `token_level`, the model-side scorer.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

ATTACKS = ("loss", "zlib", "min_k", "min_k_pp")


def auroc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """P(member score > non-member score) + P(tie) / 2, from the Mann-Whitney U statistic: midranks
    of the pooled scores, O(n log n) instead of counting every pair."""
    m, n = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    if m.size == 0 or n.size == 0:
        raise ValueError("AUC needs at least one member and one non-member score")
    pooled = np.concatenate([m, n])
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    midranks = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based; tied values share the mean rank
    u = midranks[inverse[:m.size]].sum() - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * n.size))


def min_k(values: Sequence[float], k: float = 0.2) -> float:
    """Mean of the lowest fraction k of the values (at least one)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    return float(v[:max(1, int(len(v) * k))].mean())


def zlib_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def attack_scores(token_logp: Sequence[np.ndarray], mu: Sequence[np.ndarray], sigma: Sequence[np.ndarray],
                  texts: Sequence[str], k: float = 0.2) -> dict[str, np.ndarray]:
    """Every attack's score per sequence, from its token log-probs (and the next-token distribution's
    mean / std of log p for Min-K%++); higher = more likely a member."""
    loss = np.array([float(np.mean(lp)) for lp in token_logp])
    z = [(np.asarray(lp) - np.asarray(m)) / np.maximum(np.asarray(s), 1e-6)
         for lp, m, s in zip(token_logp, mu, sigma, strict=True)]
    return {
        "loss": loss,
        "zlib": loss / np.array([zlib_length(t) for t in texts], dtype=np.float64),
        "min_k": np.array([min_k(lp, k) for lp in token_logp]),
        "min_k_pp": np.array([min_k(x, k) for x in z]),
    }


def aucs(member_scores: dict[str, np.ndarray], nonmember_scores: dict[str, np.ndarray]) -> dict[str, float]:
    return {a: auroc(member_scores[a], nonmember_scores[a]) for a in ATTACKS}


def privleak(auc: float, auc_retain: float) -> float:
    """MUSE's PrivLeak in percent: the relative gap between the unlearned and the retrained model's AUC."""
    return (auc - auc_retain) / auc_retain * 100.0 if auc_retain > 0 else math.nan


def scores_for(model, tok, template: str, pairs: list[tuple[str, str]], max_length: int, batch_size: int,
               k: float = 0.2) -> dict[str, np.ndarray]:
    """Attack scores of the answers of `pairs` under `model`."""
    from npo.eval.scoring import token_level

    toks = token_level(model, tok, template, pairs, max_length, batch_size)
    return attack_scores([t["logp"] for t in toks], [t["mu"] for t in toks], [t["sigma"] for t in toks],
                         [a for _, a in pairs], k)
