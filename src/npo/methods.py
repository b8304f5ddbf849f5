"""Unlearning methods as data: a forget term and an optional retain term.

A `Term` is one objective on one data set. Its function receives a `Micro` (npo/micro.py: the
micro-batch's examples, the model's log-probs on them, reference quantities) and returns the
loss already scaled to the micro-batch's share of the window: per-example means by examples,
token means by tokens. So accumulation and data parallelism stay exact whatever the term.
Every term calls a pure loss of `npo.losses`; the needs of a method (cached reference log-probs,
an online reference, refusals) are read off its terms.

Adding a method: a pure loss in losses.py, a term here, a line in METHODS, a golden test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from npo import losses

# what a term may need beyond the model and its data set
NEEDS = {
    "ref_forget": "the reference's log-probs of the forget answers (cached before training)",
    "ref_idk": "the reference's log-probs of the refusals (cached before training)",
    "online_ref": "the reference's next-token distributions on fresh batches (frozen copy; LoRA: adapter off)",
    "idk": "a refusal paired with each forget question",
}
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
              summary="(2/β)·mean softplus(β·logp/n + γ): length-normalised, reference-free")
IDK = Term("idk", _idk, "idk", frozenset({"idk"}), summary="NLL of a refusal to each forget question")
DPO = Term("dpo", _dpo, "forget", frozenset({"ref_forget", "ref_idk", "idk"}),
           summary="DPO preferring a refusal over the true answer, scaled by 2/β")


def _wga(m):
    logp, _ = m.token_logp("forget")
    _log_forget_logp(m, logp)
    return losses.wga_loss(logp, m.cfg.wga_alpha) * m.token_share("forget")


WGA = Term("wga", _wga, "forget", summary="token mean of sg(p^α)·log p: GA with each token damped by its own probability")


# ----------------------------------------------------------------------------- retain terms


def _nll(m, name: str):
    logp, n = m.logp(name)
    return losses.nll_loss(logp, n) * m.token_share(name)


def _kl(m):
    ref = m.ref_dist("retain")
    return losses.kl_loss(ref, m.dist("retain")) * (ref.shape[0] / m.window_tokens("retain"))


NLL_RETAIN = Term("nll", lambda m: _nll(m, "retain"), "retain", summary="token-mean NLL of retain answers")
KL_RETAIN = Term("kl", _kl, "retain", frozenset({"online_ref"}),
                 summary="KL(π_ref ‖ π_θ) over retain answer tokens")

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
}

# `npo finetune`: the same loop learning its `train` sets
FINETUNE = Method(Term("learn", lambda m: _nll(m, "train"), "train", summary="token-mean NLL (learned)"))


def reference_column(method: Method) -> str:
    needs = method.needs
    if "online_ref" in needs:
        return "online (frozen copy; LoRA: adapter off)" + (" + cached" if needs & {"ref_forget", "ref_idk"} else "")
    if needs & {"ref_forget", "ref_idk"}:
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
