"""The paper's synthetic experiment (Zhang et al. 2024, §4; Figures 3, 4 and 9), as pure functions.

Binary classification in d = 16 with a random-features model logit = aᵀReLU(Wx): W is fixed, only
a ∈ R^128 is trained (float64). Forget and retain covariates come from two Gaussians (separated by
2α·1) whose labels follow different logistic laws, so forgetting means moving π_θ on the forget
region towards the model retrained on the retain set only.

Everything is vectorised: every tensor carries a leading seed axis S, and unlearning runs all
methods at once with parameters a of shape (S, M, 128). The model is linear in a, so the gradient of
any loss is Φᵀ·(dL/dlogit) and is written in closed form (`unlearn_grad`); `unlearn_loss` is the
same objective for checks. Conventions on this binary model: the "log-prob of the answer" y is
log σ(±logit); GA's forget term, the NLL and the KL are means over samples, as in the paper's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

DIM, N_FEATURES = 16, 128
N_FORGET, N_RETAIN, N_EVAL = 200, 1000, 1000
PRETRAIN_LR, PRETRAIN_STEPS = 0.05, 20_000
EVAL_EVERY = 25
METRICS = ("forget_distance", "retain_distance", "forget_kl")
FORGET_TERMS, RETAIN_TERMS = ("ga", "idk", "npo", "dpo"), ("rt", "kl")
_F64 = torch.float64


@dataclass(frozen=True)
class Setting:
    """One unlearning objective: a forget term, an optional retain term (λ = 1), lr and β."""

    name: str
    forget: str  # "ga" | "idk" | "npo" | "dpo"
    retain: str | None  # "rt" (retain NLL) | "kl" (KL(π_ref‖π_θ) on retain x) | None
    lr: float
    beta: float = 0.0

    def __post_init__(self):
        if self.forget not in FORGET_TERMS or self.retain not in (*RETAIN_TERMS, None):
            raise ValueError(f"unknown terms in {self}")
        if self.forget in ("npo", "dpo") and self.beta <= 0:
            raise ValueError(f"{self.name}: beta must be > 0")


def table1_methods(alpha: float) -> list[Setting]:
    """Paper Table 1 settings. NPO+KL and DPO+KL are not in SPEC's table; they take their family's
    settings, as in the authors' parameter file."""
    if alpha == 1:
        ga_lr, npo_lr, npo_beta, dpo_lr, dpo_beta = 5e-4, 5e-3, 1.0, 5e-3, 0.1
    elif alpha == 0:
        ga_lr, npo_lr, npo_beta, dpo_lr, dpo_beta = 1e-4, 5e-2, 10.0, 5e-2, 5.0
    else:
        raise ValueError(f"Table 1 has settings for alpha 0 and 1 only, not {alpha}")
    return [
        Setting("GA", "ga", None, ga_lr),
        Setting("GA+RT", "ga", "rt", ga_lr),
        Setting("IDK+RT", "idk", "rt", ga_lr),
        Setting("NPO", "npo", None, npo_lr, npo_beta),
        Setting("NPO+RT", "npo", "rt", npo_lr, npo_beta),
        Setting("DPO+RT", "dpo", "rt", dpo_lr, dpo_beta),
        Setting("NPO+KL", "npo", "kl", npo_lr, npo_beta),
        Setting("DPO+KL", "dpo", "kl", dpo_lr, dpo_beta),
    ]


FIGURE3_BETAS = (0.01, 0.1, 0.2, 0.5, 1.0)
FIGURE3_LR, FIGURE3_STEPS = 5e-4, 10_000


def beta_sweep_methods(betas: Sequence[float] = FIGURE3_BETAS, lr: float = FIGURE3_LR) -> list[Setting]:
    """Figure 3: GA and NPO at several β with one learning rate, to show NPO → GA as β → 0."""
    return [Setting("GA", "ga", None, lr)] + [Setting(f"NPO β={b:g}", "npo", None, lr, b) for b in betas]


# ----------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SyntheticData:
    """Random features of one study, stacked over seeds (leading axis S). Training rows are the
    forget set first (n_forget rows), then the retain set, so one matmul serves both."""

    alpha: float
    seeds: tuple[int, ...]
    n_forget: int
    phi: torch.Tensor  # (S, n_f + n_r, K) training features
    phi_t: torch.Tensor  # (S, K, n_f + n_r) the same, transposed and contiguous (fast forward bmm)
    y: torch.Tensor  # (S, 1, n_f + n_r) labels in {0, 1}
    y_idk: torch.Tensor  # (S, 1, n_f) Bernoulli(1/2) "I don't know" labels of the forget rows
    phi_eval_f: torch.Tensor  # (S, K, n_eval) fresh forget covariates, transposed
    phi_eval_r: torch.Tensor  # (S, K, n_eval) fresh retain covariates, transposed


def _sample(g: torch.Generator, n: int, alpha: float, side: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """side = +1: forget law x ~ N(α1, I), P(y=1) = σ((x−α1)ᵀθ_f + 1), θ_f = 1/√d;
    side = −1: retain law x ~ N(−α1, I), P(y=1) = σ((x+α1)ᵀθ_r − 1), θ_r = −1/√d."""
    noise = torch.randn(n, d, generator=g, dtype=_F64)
    logit = side * (noise.sum(1) / d**0.5 + 1.0)
    return noise + side * alpha, torch.bernoulli(torch.sigmoid(logit), generator=g)


def make_data(alpha: float, seeds: Sequence[int], n_forget: int = N_FORGET, n_retain: int = N_RETAIN,
              n_eval: int = N_EVAL, dim: int = DIM, n_features: int = N_FEATURES) -> SyntheticData:
    """Draw W ~ N(0, 1/d), the training sets, idk labels and fresh eval sets, one generator per seed."""
    parts = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(n_features, dim, generator=g, dtype=_F64) / dim**0.5
        xf, yf = _sample(g, n_forget, alpha, +1, dim)
        xr, yr = _sample(g, n_retain, alpha, -1, dim)
        y_idk = torch.bernoulli(torch.full((n_forget,), 0.5, dtype=_F64), generator=g)
        xef, _ = _sample(g, n_eval, alpha, +1, dim)
        xer, _ = _sample(g, n_eval, alpha, -1, dim)
        feats = [torch.relu(w @ x.T) for x in (torch.cat([xf, xr]), xef, xer)]  # (K, n)
        parts.append((feats[0], torch.cat([yf, yr])[None], y_idk[None], feats[1], feats[2]))
    phi_t, y, y_idk, pef, per = (torch.stack(t) for t in zip(*parts, strict=True))
    return SyntheticData(float(alpha), tuple(int(s) for s in seeds), n_forget,
                         phi_t.transpose(1, 2).contiguous(), phi_t, y, y_idk, pef, per)


# ------------------------------------------------------------------------------------- models


def logits(phi_t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Transposed features (S, K, n) and parameters a (S, M, K) -> logits (S, M, n). This layout
    (and `phi` rather than `phi_t` for the backward product) is ~3x faster than the (S, n, M) one."""
    return torch.bmm(a, phi_t)


def bernoulli_kl(logit_p: torch.Tensor, logit_q: torch.Tensor) -> torch.Tensor:
    """KL(Bern(σ(p)) ‖ Bern(σ(q))) elementwise, computed from logits so it stays finite when the
    unlearned model saturates (GA drives logits to ±tens)."""
    p = torch.sigmoid(logit_p)
    return (p * (F.logsigmoid(logit_p) - F.logsigmoid(logit_q))
            + (1 - p) * (F.logsigmoid(-logit_p) - F.logsigmoid(-logit_q)))


@dataclass(frozen=True)
class Pretrained:
    """The reference π_ref (forget ∪ retain) and the retrained model (retain only), per seed."""

    ref: torch.Tensor  # (S, K)
    retrained: torch.Tensor  # (S, K)
    grad_norm: torch.Tensor  # (S, 2) final full-batch gradient norms (ref, retrained): convergence check


def pretrain(data: SyntheticData, steps: int = PRETRAIN_STEPS, lr: float = PRETRAIN_LR) -> Pretrained:
    """Full-batch GD on the mean NLL from a = 0. Both models of every seed train in one (S, 2, K)
    batch: the retrained model sees the forget rows with weight 0."""
    s, n, k = data.phi.shape
    w = torch.zeros(s, 2, n, dtype=_F64)
    w[:, 0] = 1.0 / n
    w[:, 1, data.n_forget:] = 1.0 / (n - data.n_forget)
    a = torch.zeros(s, 2, k, dtype=_F64)

    def grad(a: torch.Tensor) -> torch.Tensor:
        return torch.bmm((torch.sigmoid(logits(data.phi_t, a)) - data.y) * w, data.phi)

    with torch.no_grad():
        for _ in range(steps):
            a -= lr * grad(a)
        return Pretrained(a[:, 0].clone(), a[:, 1].clone(), grad(a).norm(dim=-1))


# ---------------------------------------------------------------------------------- unlearning


def _coefficients(methods: Sequence[Setting]) -> dict[str, torch.Tensor]:
    """Per-run weight of each loss term (1 or 0) plus β and lr, as (1, M, 1) tensors that broadcast
    over (S, M, n). Terms no run uses are left out, so they cost nothing."""
    def col(values) -> torch.Tensor:
        return torch.tensor(values, dtype=_F64).view(1, -1, 1)

    out = {t: col([float(m.forget == t) for m in methods]) for t in FORGET_TERMS if any(m.forget == t for m in methods)}
    out |= {t: col([float(m.retain == t) for m in methods]) for t in RETAIN_TERMS if any(m.retain == t for m in methods)}
    out["beta"] = col([m.beta if m.beta > 0 else 1.0 for m in methods])  # runs without β never use it
    out["lr"] = col([m.lr for m in methods])
    return out


def _logp(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log π(y|x) = log σ(±z) for labels y ∈ {0, 1}."""
    return F.logsigmoid((2 * y - 1) * z)


def _per_sample(z: torch.Tensor, ref_z: torch.Tensor, data: SyntheticData, c: dict[str, torch.Tensor],
                want_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss values (or dLoss/dlogit when want_grad) of every run on the forget rows
    (S, M, n_f) and the retain rows (S, M, n_r), before averaging over samples.
    Derivatives use d log σ(±z)/dz = y − σ(z)."""
    nf, beta = data.n_forget, c["beta"]
    zf, zr, rf, rr = z[..., :nf], z[..., nf:], ref_z[..., :nf], ref_z[..., nf:]
    yf, yr, yi = data.y[..., :nf], data.y[..., nf:], data.y_idk
    forget, retain = torch.zeros_like(zf), torch.zeros_like(zr)
    sf, sr = (torch.sigmoid(zf), torch.sigmoid(zr)) if want_grad else (None, None)
    if "npo" in c or "dpo" in c:
        delta = _logp(zf, yf) - _logp(rf, yf)  # log π_θ(y)/π_ref(y)
    if "ga" in c:  # mean log-prob of the forget labels (descending it ascends the NLL)
        forget += c["ga"] * (yf - sf if want_grad else _logp(zf, yf))
    if "idk" in c:  # NLL of the "I don't know" labels
        forget -= c["idk"] * (yi - sf if want_grad else _logp(zf, yi))
    if "npo" in c:  # (2/β) softplus(β δ); gradient weight 2σ(β δ)
        forget += c["npo"] * (2 * torch.sigmoid(beta * delta) * (yf - sf) if want_grad
                              else 2 / beta * F.softplus(beta * delta))
    if "dpo" in c:  # (2/β) softplus(−β m), m = idk log-ratio − true-label log-ratio
        margin = _logp(zf, yi) - _logp(rf, yi) - delta
        forget += c["dpo"] * (-2 * torch.sigmoid(-beta * margin) * (yi - yf) if want_grad
                              else 2 / beta * F.softplus(-beta * margin))
    if "rt" in c:  # retain NLL
        retain += c["rt"] * (sr - yr if want_grad else -_logp(zr, yr))
    if "kl" in c:  # KL(π_ref ‖ π_θ) on retain x
        retain += c["kl"] * (sr - torch.sigmoid(rr) if want_grad else bernoulli_kl(rr, zr))
    return forget, retain


def reference_logits(data: SyntheticData, models: Pretrained) -> torch.Tensor:
    """π_ref's logits on the training rows, (S, 1, n): the reference is frozen, compute them once."""
    return logits(data.phi_t, models.ref.unsqueeze(1))


def unlearn_loss(a: torch.Tensor, data: SyntheticData, ref_z: torch.Tensor,
                 methods: Sequence[Setting]) -> torch.Tensor:
    """Objective of every run, (S, M): forget term mean over forget rows + retain term mean over
    retain rows. Differentiable; used for checks, the loop uses `unlearn_grad`."""
    forget, retain = _per_sample(logits(data.phi_t, a), ref_z, data, _coefficients(methods), False)
    return forget.mean(-1) + retain.mean(-1)


def _grad(a: torch.Tensor, data: SyntheticData, ref_z: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
    nf, nr = data.n_forget, data.phi.shape[1] - data.n_forget
    forget, retain = _per_sample(logits(data.phi_t, a), ref_z, data, c, True)
    return torch.bmm(torch.cat([forget / nf, retain / nr], dim=-1) if nr else forget / nf, data.phi)


def forget_rows(data: SyntheticData) -> SyntheticData:
    """The same study without its retain rows: runs with no retain term never read them, and the
    forget rows are 1/6 of the training set, so e.g. the Figure 3 sweep runs ~6x faster."""
    nf = data.n_forget
    return replace(data, phi=data.phi[:, :nf].contiguous(), phi_t=data.phi_t[..., :nf].contiguous(),
                   y=data.y[..., :nf].contiguous())


def unlearn_grad(a: torch.Tensor, data: SyntheticData, ref_z: torch.Tensor,
                 methods: Sequence[Setting]) -> torch.Tensor:
    """Closed-form gradient of `unlearn_loss` w.r.t. a, (S, M, K): (dL/dz)·Φ, all runs in one bmm."""
    return _grad(a, data, ref_z, _coefficients(methods))


def eval_targets(data: SyntheticData, models: Pretrained) -> dict[str, torch.Tensor]:
    """Logits of the frozen retrained and reference models on the eval sets, each (S, 1, n_eval)."""
    retr, ref = models.retrained.unsqueeze(1), models.ref.unsqueeze(1)
    return {"retr_f": logits(data.phi_eval_f, retr), "retr_r": logits(data.phi_eval_r, retr),
            "ref_f": logits(data.phi_eval_f, ref)}


def evaluate(a: torch.Tensor, data: SyntheticData, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The three metrics of every run, each (S, M): forget/retain distance = mean KL(π_retrained ‖ π_θ)
    on fresh forget/retain x; forget KL = mean KL(π_ref ‖ π_θ) on fresh forget x."""
    zf, zr = logits(data.phi_eval_f, a), logits(data.phi_eval_r, a)
    kl = {"forget_distance": (targets["retr_f"], zf), "retain_distance": (targets["retr_r"], zr),
          "forget_kl": (targets["ref_f"], zf)}
    return {key: bernoulli_kl(p, q).mean(-1).clamp_min(0.0) for key, (p, q) in kl.items()}  # no -1e-19


@dataclass(frozen=True)
class Curves:
    """Metric trajectories of one study: metrics[name] has shape (T, S, M) at `steps` (T,)."""

    alpha: float
    seeds: tuple[int, ...]
    methods: tuple[Setting, ...]
    steps: np.ndarray
    metrics: dict[str, np.ndarray]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.methods]

    def summary(self, metric: str) -> dict[str, np.ndarray]:
        """Mean, std (population), min and max over seeds, each (T, M)."""
        v = self.metrics[metric]
        return {"mean": v.mean(1), "std": v.std(1), "min": v.min(1), "max": v.max(1)}


def unlearn(data: SyntheticData, models: Pretrained, methods: Sequence[Setting], steps: int,
            eval_every: int = EVAL_EVERY) -> Curves:
    """Full-batch plain GD on a from π_ref for every (seed, method) at once; metrics at step 0 and
    every `eval_every` steps (and at the last step)."""
    s, _, k = data.phi.shape
    c = _coefficients(methods)
    if not any(t in c for t in RETAIN_TERMS):
        data = forget_rows(data)
    lr = c["lr"]
    ref_z, targets = reference_logits(data, models), eval_targets(data, models)
    a = models.ref.unsqueeze(1).expand(s, len(methods), k).clone()
    at, rows = [], []
    with torch.no_grad():
        for step in range(steps + 1):
            if step % eval_every == 0 or step == steps:
                at.append(step)
                rows.append({key: v.numpy().copy() for key, v in evaluate(a, data, targets).items()})
            if step < steps:
                a -= lr * _grad(a, data, ref_z, c)
    metrics = {key: np.stack([r[key] for r in rows]) for key in METRICS}
    return Curves(data.alpha, data.seeds, tuple(methods), np.asarray(at), metrics)


def study(alpha: float, seeds: Sequence[int], steps: int = 2000, pretrain_steps: int = PRETRAIN_STEPS,
          methods: Sequence[Setting] | None = None, eval_every: int = EVAL_EVERY) -> tuple[Curves, Pretrained]:
    """Data, pre-training and unlearning of one α in one call (Table 1 methods by default)."""
    data = make_data(alpha, seeds)
    models = pretrain(data, pretrain_steps)
    return unlearn(data, models, methods or table1_methods(alpha), steps, eval_every), models
