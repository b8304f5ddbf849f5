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
    """SimNPO: (2/beta) mean softplus(beta (logp/n + gamma)); length-normalised, reference-free.

    gamma as the SimNPO authors' code has it (`-logsigmoid(beta (nll/n - gamma))`): inside beta's
    scaling, so published gamma values mean the same here (the paper's margin is beta x gamma)."""
    return (2.0 / beta) * F.softplus(beta * (logp / n_tokens.clamp(min=1) + gamma)).mean()


def dpo_loss(logp_win: torch.Tensor, logp_lose: torch.Tensor, ref_logp_win: torch.Tensor,
             ref_logp_lose: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO with the refusal preferred ("win") over the true answer ("lose"), scaled by 2/beta like NPO:
    (2/beta) mean softplus(-beta [(logp_win - ref_win) - (logp_lose - ref_lose)])."""
    margin = (logp_win - ref_logp_win) - (logp_lose - ref_logp_lose)
    return (2.0 / beta) * F.softplus(-beta * margin).mean()


def kl_batchmean(ref_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi_theta) summed over the vocabulary and averaged over every one of the B x L
    positions of [B, L, vocab] inputs: the NPO authors' `kl_div(..., reduction="batchmean")` over batches
    padded to max_length, prompts and padding included (`kl=official`)."""
    flat_ref, flat = ref_log_probs.flatten(0, 1), log_probs.flatten(0, 1)
    return F.kl_div(flat, flat_ref, log_target=True, reduction="sum") / flat_ref.shape[0]


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


def satimp_loss(token_logp: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """SatImp (Yang et al., ICML 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM
    Unlearning"): mean_t sg(p_t^beta1 (1 - p_t)^beta2) * log p_t over the forget tokens. The
    saturation factor p^beta1 damps tokens already unlikely (as WGA's), the importance factor
    (1 - p)^beta2 damps tokens the model is sure of. The authors recommend beta1 = 5, beta2 = 0.1."""
    lp = token_logp.detach()
    weight = (beta1 * lp).exp() * (-torch.expm1(lp)).clamp(min=0) ** beta2  # 1 - p = -expm1(log p)
    return _token_mean(weight * token_logp)


def tnpo_loss(token_logp: torch.Tensor, ref_token_logp: torch.Tensor, beta: float, alpha: float = 0.0
              ) -> torch.Tensor:
    """Token-wise NPO, TNPO (alpha = 0), and weighted TNPO, WTNPO (Wang et al., ICLR 2025, the WGA
    paper): mean_t sg(p_t^alpha) (2/beta) softplus(beta (l_t - r_t)), NPO applied to each token's
    log-ratio instead of the answer's sum, so each token gets its own adaptive weight
    W_t = 2 sigmoid(beta (l_t - r_t)) instead of every token of an answer sharing one.

    The authors' code minimises the surrogate mean_t sg(p_t^alpha W_t) l_t, whose gradient this
    closed form equals; its value is NPO-like instead: >= 0, (2/beta) log 2 at theta = ref."""
    weight = (alpha * token_logp.detach()).exp()
    return _token_mean(weight * (2.0 / beta) * F.softplus(beta * (token_logp - ref_token_logp)))


def undial_loss(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, targets: torch.Tensor, gamma: float
                ) -> torch.Tensor:
    """UNDIAL (Dong et al., NAACL 2025, "Self-Distillation with Adjusted Logits for Robust
    Unlearning"): the cross-entropy from q_t = softmax(z_ref,t - gamma onehot(y_t)), the frozen
    reference's logits with the target token's logit lowered by gamma, to the model's p_theta,t,
    averaged over the labelled positions: mean_t -sum_v q_t[v] log p_theta,t[v]. A distillation
    toward a fixed distribution, so bounded below (by the entropy of q), unlike GA.

    Inputs are [N, vocab] log-distributions at the labelled positions only (a softmax does not see
    a constant shift, so log-softmaxed reference logits give the same q). open-unlearning's version
    indexes the vocabulary with the label -100 of prompt and padding positions (lowering an
    arbitrary token's logit there) and averages over every position; here only labelled positions
    enter, and the mean is over them."""
    if log_probs.shape[0] == 0:
        return log_probs.sum() * 0.0
    adjusted = ref_log_probs.detach().scatter_add(
        -1, targets[:, None], torch.full_like(ref_log_probs[:, :1], -gamma))
    q = F.softmax(adjusted, -1)
    return -(q * log_probs).sum(-1).mean()


def ceu_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE-U, cross-entropy unlearning (Yang 2025, arXiv 2503.01224): the cross-entropy to the
    model's own detached distribution with the target token's logit set to -inf,
    q_t[v] = p_t[v] / (1 - p_t[y_t]) for v != y_t, q_t[y_t] = 0; mean_t -sum_v q_t[v] log p_t[v].
    Its gradient in the logits is p_t - q_t: the label's mass moves to the other tokens in
    proportion to their probabilities, and it stays bounded as p_t[y_t] -> 0 (GA's does not).
    No reference model. Inputs: [N, vocab] log-distributions at the positions used."""
    if log_probs.shape[0] == 0:
        return log_probs.sum() * 0.0
    masked = log_probs.detach().scatter(-1, targets[:, None], float("-inf"))
    q = F.softmax(masked, -1)
    return -(q * log_probs.masked_fill(q == 0, 0.0)).sum(-1).mean()


def pdu_forget_loss(logits: torch.Tensor) -> torch.Tensor:
    """PDU's forget term (Entesari et al. 2025, "Constrained Entropic Unlearning: A Primal-Dual
    Framework for LLMs", arXiv 2506.05314): logit-margin flattening, mean_t (max_v z_t,v -
    mean_v z_t,v)^2 over the labelled positions. Zero exactly when the next-token distribution is
    uniform; softmax-free, so it neither saturates nor explodes. Inputs: [N, vocab] logits (any
    per-row constant shift, such as a log-softmax, gives the same value)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return ((logits.max(-1).values - logits.mean(-1)) ** 2).mean()


def pdu_dual_update(lam: float, retain_loss: float, lr: float, eps: float) -> float:
    """PDU's dual ascent on the constraint retain_loss <= eps: lambda <- max(0, lambda + lr (L_r - eps)).
    The primal objective is gamma L_f + lambda (L_r - eps) (the constant -lambda eps is not logged)."""
    return max(0.0, lam + lr * (retain_loss - eps))


def kto_loss(logp: torch.Tensor, ref_logp: torch.Tensor, kl: torch.Tensor, beta: float,
             link: str = "logsigmoid") -> torch.Tensor:
    """KTO's undesirable-example term as the NPO authors ran it for unlearning (Zhang et al. 2024,
    their TOFU/dataloader.py, loss types kto_logsigmoid and kto_sigmoid):
    1 - (2/beta) mean_i link(KL - beta (L_i - L_ref,i)) on summed answer log-probs, with
    KL = sg(mean_j [L_theta(idk_j) - L_ref(idk_j)]) over refusals to the same questions, neither
    scaled by beta nor clamped at 0 (the KTO paper and TRL use max(0, KL) inside beta's product).
    link = logsigmoid is bounded below by 1; sigmoid is bounded but can be negative (the 1 is a
    constant)."""
    fn = {"logsigmoid": F.logsigmoid, "sigmoid": torch.sigmoid}[link]
    return 1.0 - (2.0 / beta) * fn(kl.detach() - beta * (logp - ref_logp)).mean()


# ----------------------------------------------------------------------------- representations


def rmu_control_vector(hidden_size: int, seed: int, kind: str = "uniform") -> torch.Tensor:
    """RMU's fixed random direction u (unit L2 norm, float32), drawn from its own generator seeded
    with `seed`, so every machine draws the same one. "uniform": entries from U[0, 1), then
    normalised, as the WMDP code draws it (all positive, so near the all-ones diagonal);
    "gaussian": a direction uniform on the sphere."""
    g = torch.Generator().manual_seed(seed)
    draw = torch.rand if kind == "uniform" else torch.randn
    u = draw(hidden_size, generator=g, dtype=torch.float64)
    return (u / u.norm()).float()


def rmu_loss(hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RMU's activation loss (Li et al., ICML 2024, "The WMDP Benchmark"): the mean over rows
    (tokens) of (1/H) ||h - target||^2, i.e. the mean squared error per element as in the WMDP
    code, so logged values are on its scale (Adam's steps do not see the common 1/H).
    Forget term: target = c u (the steering coefficient times the control vector, broadcast);
    retain term: target = the frozen model's activations at the same tokens. Computed in fp32."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    return (hidden.float() - target.float()).pow(2).mean(-1).mean()
