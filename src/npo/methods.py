"""Unlearning methods as data: a forget term and an optional retain term.

A `Term` is one objective on one data set. Its function receives a `Micro` (npo/micro.py: the
micro-batch's examples, the model's log-probs on them, reference quantities) and returns the
loss already scaled to the micro-batch's share of the window: per-example means by examples,
token means by tokens. So accumulation and data parallelism stay exact whatever the term.
Every term calls a pure loss of `npo.losses`; the needs of a method (cached reference log-probs,
an online reference, refusals) are read off its terms.

Adding a method: a pure loss in losses.py, a term here, a line in METHODS, a golden test.
A few objectives carry more than a loss, declared on their term as data: parameters they train
(RMU), state kept across steps and in checkpoints (PDU's dual variable, RMU's control vector), a
pass over the whole window before its micro-batches (KTO's KL baseline), an update after each
optimizer step (PDU's dual ascent), a coefficient read from that state instead of the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from npo import losses
from npo.errors import NpoError
from npo.logprobs import decoder_blocks

# what a term may need beyond the model and its data set
NEEDS = {
    "ref_forget": "the reference's log-probs of the forget answers (cached before training)",
    "ref_idk": "the reference's log-probs of the refusals (cached before training)",
    "ref_forget_tokens": "the reference's per-token log-probs of the forget answers (cached before training)",
    "online_ref": "the reference's next-token distributions on the term's batches (frozen copy; LoRA: adapter off)",
    "frozen_hidden": "activations of the model with its trained parameters at their starting values "
                     "(a copy of those tensors only; LoRA: adapter off)",
    "idk": "a refusal paired with each forget question",
}
CACHED = frozenset({"ref_forget", "ref_idk", "ref_forget_tokens"})  # computed once before training
# data set -> (metrics.jsonl key of the term's value, config key of its coefficient)
ROLES = {"forget": ("forget_loss", "forget_weight"), "idk": ("forget_loss", "forget_weight"),
         "retain": ("retain_loss", "retain_weight"), "train": ("nll", None)}


@dataclass(frozen=True)
class Term:
    name: str
    fn: Callable  # (Micro) -> scaled loss tensor
    reads: str  # the data set of its examples: forget | idk | retain | train
    needs: frozenset[str] = frozenset()
    summary: str = ""  # one line for the method table
    trains: str | None = None  # config key of a regex: only the parameters it matches are trained
    init_state: Callable | None = None  # (cfg, model) -> {key: value}: state kept across steps, in checkpoints
    before_step: Callable | None = None  # (trainer, micros, window) -> {key: tensor}: over the window, no grad
    after_step: Callable | None = None  # (trainer, record) -> None: after each optimizer step taken
    coef: str | None = None  # state key of this term's coefficient (instead of the config's weight)

    @property
    def log_key(self) -> str:
        return ROLES[self.reads][0]

    @property
    def weight_key(self) -> str | None:
        return ROLES[self.reads][1]


@dataclass(frozen=True)
class Method:
    forget: Term  # for fine-tuning: the objective on the set it learns
    retain: Term | None = None

    @property
    def terms(self) -> tuple[Term, ...]:
        return (self.forget,) if self.retain is None else (self.forget, self.retain)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(t.needs for t in self.terms))

    @property
    def trains(self) -> str | None:
        return next((t.trains for t in self.terms if t.trains), None)

    @property
    def sets(self) -> frozenset[str]:
        """Data sets to load: each term's own, the forget set under refusals, refusals when needed."""
        names = {t.reads for t in self.terms}
        if "idk" in names or "idk" in self.needs:
            names |= {"forget", "idk"}
        return frozenset(names)


def _log_forget_logp(m, logp) -> None:
    m.log("forget_logp", logp.detach().sum() / m.window_examples("forget"))


# ----------------------------------------------------------------------------- forget terms


def _ga(m):
    logp, n = m.logp("forget")
    _log_forget_logp(m, logp)
    return losses.ga_loss(logp, n) * m.token_share("forget")


def _npo(m):
    logp, _ = m.logp("forget")
    _log_forget_logp(m, logp)
    ref = m.ref_logp("forget")
    m.log("npo_weight", losses.npo_weight(logp, ref, m.cfg.beta).sum() / m.window_examples("forget"))
    return losses.npo_loss(logp, ref, m.cfg.beta) * m.example_share("forget")


def _simnpo(m):
    logp, n = m.logp("forget")
    _log_forget_logp(m, logp)
    return losses.simnpo_loss(logp, n, m.cfg.beta, m.cfg.gamma) * m.example_share("forget")


def _idk(m):
    logp, n = m.logp("idk")
    return losses.nll_loss(logp, n) * m.token_share("idk")


def _dpo(m):
    logp, _ = m.logp("forget")
    _log_forget_logp(m, logp)
    logp_idk, _ = m.logp("idk")
    loss = losses.dpo_loss(logp_idk, logp, m.ref_logp("idk"), m.ref_logp("forget"), m.cfg.beta)
    return loss * m.example_share("forget")


GA = Term("ga", _ga, "forget", summary="token-mean log-prob of the forget answers: ascent on their NLL, unbounded below")
NPO = Term("npo", _npo, "forget", frozenset({"ref_forget"}),
           summary="(2/β)·mean softplus(β·(logp − logp_ref)) on summed answer log-probs (bounded)")
SIMNPO = Term("simnpo", _simnpo, "forget",
              summary="(2/β)·mean softplus(β·(logp/n + γ)): length-normalised, reference-free")
IDK = Term("idk", _idk, "idk", frozenset({"idk"}), summary="NLL of a refusal to each forget question")
DPO = Term("dpo", _dpo, "forget", frozenset({"ref_forget", "ref_idk", "idk"}),
           summary="DPO preferring a refusal over the true answer, scaled by 2/β")


def _wga(m):
    logp, _ = m.token_logp("forget")
    _log_forget_logp(m, logp)
    return losses.wga_loss(logp, m.cfg.wga_alpha) * m.token_share("forget")


def _satimp(m):
    logp, _ = m.token_logp("forget")
    _log_forget_logp(m, logp)
    return losses.satimp_loss(logp, m.cfg.satimp_beta1, m.cfg.satimp_beta2) * m.token_share("forget")


def _tnpo(m, alpha: float):
    logp, _ = m.token_logp("forget")
    _log_forget_logp(m, logp)
    return losses.tnpo_loss(logp, m.ref_token_logp("forget"), m.cfg.beta, alpha) * m.token_share("forget")


def _log_dist_logp(m, log_probs, targets) -> None:
    _log_forget_logp(m, log_probs.detach().gather(-1, targets[:, None]).sum())


def _undial(m):
    log_probs, (targets, _) = m.dist("forget"), m.targets("forget")
    _log_dist_logp(m, log_probs, targets)
    loss = losses.undial_loss(log_probs, m.ref_dist("forget"), targets, m.cfg.undial_gamma)
    return loss * m.token_share("forget")


def _rank_in_row(rows):
    """0, 1, 2... along each answer's labelled tokens (rows are sorted)."""
    counts = torch.bincount(rows)
    starts = counts.cumsum(0) - counts
    return torch.arange(rows.numel(), device=rows.device) - starts[rows]


def _ceu(m):
    skip = m.cfg.ceu_ignore_first
    log_probs, (targets, rows) = m.dist("forget"), m.targets("forget")
    _log_dist_logp(m, log_probs, targets)
    keep = _rank_in_row(rows) >= skip
    return losses.ceu_loss(log_probs[keep], targets[keep]) * m.token_share("forget", skip)


def _kto_baseline(t, micros, window):
    """KTO's KL: the mean log-ratio of the refusals over the window, at the current weights (each
    process scores its micro-batches; the sum is reduced over processes)."""
    total = torch.zeros((), device=t.acc.device)
    for m in micros:
        logp, _ = m.logp("idk")
        total += (logp - m.ref_logp("idk")).sum()
    return {"kto_kl": t.acc.reduce(total, "sum") / len(window["idk"])}


def _kto(m, link: str):
    logp, _ = m.logp("forget")
    _log_forget_logp(m, logp)
    kl = m.prepared["kto_kl"]
    m.log("kto_kl", kl * m.example_share("forget"))
    return losses.kto_loss(logp, m.ref_logp("forget"), kl, m.cfg.beta, link) * m.example_share("forget")


def _pdu_forget(m):
    logits, (targets, _) = m.logits("forget"), m.targets("forget")
    _log_dist_logp(m, logits.detach().log_softmax(-1), targets)
    return losses.pdu_forget_loss(logits) * m.token_share("forget")


def _rmu_forget(m):
    cfg = m.cfg
    h = m.hidden("forget", cfg.rmu_layer, cfg.rmu_positions)
    target = cfg.rmu_steering * m.state["rmu_vector"].to(h.device)
    return losses.rmu_loss(h, target) * _rmu_share(m, "forget")


def _rmu_share(m, name):
    return m.token_share(name) if m.cfg.rmu_positions == "labelled" else m.example_share(name)


def _rmu_init(cfg, model):
    """The control vector; refuses trained tensors the activations at rmu_layer do not depend on."""
    body, attr = decoder_blocks(model)
    blocks = getattr(body, attr)
    if cfg.rmu_layer >= len(blocks):
        raise NpoError(f"rmu_layer {cfg.rmu_layer}: the model has {len(blocks)} decoder blocks (0-based)")
    reached = {id(p) for m in (*blocks[:cfg.rmu_layer + 1], body.get_input_embeddings()) for p in m.parameters()}
    late = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in reached]
    if late:
        raise NpoError(f"rmu_params selects {len(late)} tensors that the activations after block "
                       f"{cfg.rmu_layer} do not depend on (e.g. '{late[0]}'): choose blocks up to rmu_layer")
    return {"rmu_vector": losses.rmu_control_vector(model.config.hidden_size, cfg.seed, cfg.rmu_vector)}


WGA = Term("wga", _wga, "forget", summary="token mean of sg(p^α)·log p: GA with each token damped by its own probability")
SATIMP = Term("satimp", _satimp, "forget",
              summary="token mean of sg(p^β1·(1−p)^β2)·log p: damps forgotten and certain tokens")
TNPO = Term("tnpo", lambda m: _tnpo(m, 0.0), "forget", frozenset({"ref_forget_tokens"}),
            summary="token mean of (2/β)·softplus(β·(l_t − r_t)): NPO per token, each with its own weight")
WTNPO = Term("wtnpo", lambda m: _tnpo(m, m.cfg.wtnpo_alpha), "forget", frozenset({"ref_forget_tokens"}),
             summary="TNPO with each token's term weighted by sg(p^α)")
UNDIAL = Term("undial", _undial, "forget", frozenset({"online_ref"}),
              summary="cross-entropy to softmax(z_ref − γ·onehot(y)) over answer tokens: self-distillation, bounded")
CEU = Term("ceu", _ceu, "forget",
           summary="cross-entropy to the model's own detached distribution with the label's logit at −∞")
KTO = Term("kto", lambda m: _kto(m, "logsigmoid"), "forget", frozenset({"ref_forget", "ref_idk", "idk"}),
           before_step=_kto_baseline,
           summary="1 − (2/β)·mean logσ(KL − β·(logp − logp_ref)), KL from refusals (the NPO authors' KTO)")
KTO_SIGMOID = Term("kto_sigmoid", lambda m: _kto(m, "sigmoid"), "forget", frozenset({"ref_forget", "ref_idk", "idk"}),
                   before_step=_kto_baseline, summary="KTO with σ in place of logσ")
PDU_FORGET = Term("pdu", _pdu_forget, "forget",
                  summary="mean (max_v z_v − mean_v z_v)² over answer positions: flattens the logits")
RMU_FORGET = Term("rmu", _rmu_forget, "forget", trains="rmu_params", init_state=_rmu_init,
                  summary="(1/H)·‖h_l − c·u‖² over forget tokens: activations at layer l pushed to a random direction")


# ----------------------------------------------------------------------------- retain terms


def _nll(m, name: str):
    logp, n = m.logp(name)
    return losses.nll_loss(logp, n) * m.token_share(name)


def _kl(m):
    if m.cfg.kl == "official":  # every position of batches padded to max_length, averaged per micro-batch
        return losses.kl_batchmean(m.ref_padded_dist("retain"), m.padded_dist("retain")) * m.example_share("retain")
    ref = m.ref_dist("retain")
    return losses.kl_loss(ref, m.dist("retain")) * (ref.shape[0] / m.window_tokens("retain"))


def _pdu_dual_step(t, record):
    """Dual ascent on lambda once per optimizer step, from the window's retain NLL, after warm-up."""
    if t.step >= round(t.cfg.pdu_warmup_epochs * t.steps_per_epoch):
        t.method_state["pdu_lambda"] = losses.pdu_dual_update(
            t.method_state["pdu_lambda"], record["retain_loss"], t.cfg.pdu_dual_lr, t.cfg.pdu_eps)


def _pdu_retain(m):
    m.log("pdu_lambda", torch.tensor(m.state["pdu_lambda"] * m.example_share("retain")))
    return _nll(m, "retain")


def _rmu_retain(m):
    cfg = m.cfg
    frozen = m.ref_hidden("retain", cfg.rmu_layer, cfg.rmu_positions)
    h = m.hidden("retain", cfg.rmu_layer, cfg.rmu_positions)
    return losses.rmu_loss(h, frozen) * _rmu_share(m, "retain")


NLL_RETAIN = Term("nll", lambda m: _nll(m, "retain"), "retain", summary="token-mean NLL of retain answers")
KL_RETAIN = Term("kl", _kl, "retain", frozenset({"online_ref"}),
                 summary="KL(π_ref ‖ π_θ) over retain answer tokens (`kl=official`: every padded position)")
PDU_RETAIN = Term("pdu_nll", _pdu_retain, "retain", coef="pdu_lambda", after_step=_pdu_dual_step,
                  init_state=lambda cfg, model: {"pdu_lambda": float(cfg.retain_weight)},
                  summary="λ·NLL of retain answers, λ ← max(0, λ + η·(NLL − ε)) each step (PDU's dual ascent)")
RMU_RETAIN = Term("rmu_retain", _rmu_retain, "retain", frozenset({"frozen_hidden"}),
                  summary="(1/H)·‖h_l − h_l^frozen‖² over retain tokens")

# ----------------------------------------------------------------------------- methods

METHODS: dict[str, Method] = {
    "ga": Method(GA),
    "ga_rt": Method(GA, NLL_RETAIN),
    "ga_kl": Method(GA, KL_RETAIN),
    "npo": Method(NPO),
    "npo_rt": Method(NPO, NLL_RETAIN),
    "npo_kl": Method(NPO, KL_RETAIN),
    "simnpo": Method(SIMNPO, NLL_RETAIN),
    "idk_rt": Method(IDK, NLL_RETAIN),
    "dpo": Method(DPO),
    "dpo_rt": Method(DPO, NLL_RETAIN),
    "dpo_kl": Method(DPO, KL_RETAIN),
    "wga": Method(WGA),
    "wga_rt": Method(WGA, NLL_RETAIN),
    "wga_kl": Method(WGA, KL_RETAIN),
    "satimp": Method(SATIMP),
    "satimp_rt": Method(SATIMP, NLL_RETAIN),
    "tnpo": Method(TNPO),
    "tnpo_kl": Method(TNPO, KL_RETAIN),
    "wtnpo": Method(WTNPO),
    "wtnpo_kl": Method(WTNPO, KL_RETAIN),
    "undial": Method(UNDIAL),
    "ceu": Method(CEU),
    "kto": Method(KTO),
    "kto_sigmoid": Method(KTO_SIGMOID),
    "kto_rt": Method(KTO, NLL_RETAIN),
    "pdu": Method(PDU_FORGET, PDU_RETAIN),
    "rmu": Method(RMU_FORGET, RMU_RETAIN),
}

# `npo finetune`: the same loop learning its `train` sets
FINETUNE = Method(Term("learn", lambda m: _nll(m, "train"), "train", summary="token-mean NLL (learned)"))


def reference_column(method: Method) -> str:
    needs = method.needs
    if "online_ref" in needs:
        return "online (frozen copy; LoRA: adapter off)" + (" + cached" if needs & CACHED else "")
    if "frozen_hidden" in needs:
        return "starting values of the trained tensors (LoRA: adapter off)"
    if needs & CACHED:
        return "cached log-probs, no model kept"
    return "none"


def method_table() -> str:
    """The README's method tables, from METHODS (`npo methods` prints them; a test compares)."""
    rows = ["| method | forget term | retain term | reference |", "|---|---|---|---|"]
    terms: dict[str, Term] = {}
    for name, m in METHODS.items():
        terms.update((t.name, t) for t in m.terms)
        retain = f"`{m.retain.name}`" if m.retain else "none"
        rows.append(f"| `{name}` | `{m.forget.name}` | {retain} | {reference_column(m)} |")
    rows += ["", "| term | objective (minimised) |", "|---|---|"]
    rows += [f"| `{t.name}` | {t.summary} |" for t in terms.values()]
    return "\n".join(rows)
