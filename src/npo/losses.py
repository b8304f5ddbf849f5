"""The unlearning losses as pure functions of log-prob tensors (Zhang et al. 2024, Sec. 3; SimNPO:
Fan et al. 2024). Each returns the batch mean and is differentiable.

Conventions kept from the original implementations: GA's forget term and the NLL are token means
over the batch; NPO and DPO use summed sequence log-probs. Their gradient scales differ by about
the answer length, which is why GA and NPO need different learning rates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nll_loss(logp_tokens_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over the batch (the usual LM loss)."""
    return -logp_tokens_sum.sum() / n_tokens.sum().clamp(min=1)


def ga_loss(logp: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Token-mean log-prob of the forget answers; minimising it ascends the NLL (unbounded below)."""
    return logp.sum() / n_tokens.sum().clamp(min=1)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: (2/beta) mean softplus(beta (logp - ref_logp)) = -(2/beta) E log sigmoid(-beta log(pi/pi_ref)).

    Bounded below by 0; equals (2/beta) log 2 at theta = ref. Its gradient is GA's weighted by
    W = 2 sigmoid(beta (logp - ref_logp)) (see `npo_weight`), which vanishes on forgotten samples.
    """
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp)).mean()


def npo_weight(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """The adaptive weight W in (0, 2) of NPO's gradient, per example (logged, not differentiated)."""
    return 2.0 * torch.sigmoid(beta * (logp - ref_logp)).detach()


def simnpo_loss(logp: torch.Tensor, n_tokens: torch.Tensor, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """SimNPO: (2/beta) mean softplus(beta logp/n + gamma); length-normalised, reference-free."""
    return (2.0 / beta) * F.softplus(beta * logp / n_tokens.clamp(min=1) + gamma).mean()


def dpo_loss(logp_win: torch.Tensor, logp_lose: torch.Tensor, ref_logp_win: torch.Tensor,
             ref_logp_lose: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO with the refusal preferred ("win") over the true answer ("lose"), scaled by 2/beta like NPO:
    (2/beta) mean softplus(-beta [(logp_win - ref_win) - (logp_lose - ref_lose)])."""
    margin = (logp_win - ref_logp_win) - (logp_lose - ref_logp_lose)
    return (2.0 / beta) * F.softplus(-beta * margin).mean()


def kl_loss(ref_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi_theta) per labelled position, averaged over positions. Inputs are [N, vocab]
    log-distributions at labelled positions only (padding and prompts never enter the mean)."""
    if ref_log_probs.shape[0] == 0:
        return log_probs.sum() * 0.0
    return F.kl_div(log_probs, ref_log_probs, log_target=True, reduction="sum") / ref_log_probs.shape[0]


# ----------------------------------------------------------------------------- token-level objectives
# Inputs are per-token tensors over the labelled tokens of a micro-batch (npo.logprobs order); each
# returns the mean over those tokens (0 with a graph when there are none).


def _token_mean(x: torch.Tensor) -> torch.Tensor:
    return x.sum() / max(1, x.numel())


def wga_loss(token_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """WGA, weighted gradient ascent (Wang et al., ICLR 2025, "Rethinking LLM Unlearning Objectives:
    A Gradient Perspective and Go Beyond"): mean_t sg(p_t^alpha) * log p_t over the forget tokens,
    p_t = exp(log p_t) under the current model. GA's token mean, each token's ascent damped by its
    own detached probability, so tokens already forgotten stop being pushed down. alpha = 0 is GA."""
    weight = (alpha * token_logp.detach()).exp()  # p^alpha, exact for log-probs
    return _token_mean(weight * token_logp)
