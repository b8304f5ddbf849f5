"""The one log-prob function: (model, batch) -> per-sequence summed log-prob of the labelled tokens.

The LM head and an fp32 log-softmax run only on labelled positions, in chunks, so a 128k
vocabulary never materialises a (batch x length x vocab) fp32 tensor. Position ids follow the
attention mask, so left and right padding give the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from npo.data.batches import IGNORE


def _unwrap(model):
    """The transformers model under PEFT / DDP wrappers (LoRA layers stay injected)."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _labelled(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch row, position of the predicting hidden state, target id) of every labelled token."""
    labels = batch["labels"][:, 1:]
    rows, cols = (labels != IGNORE).nonzero(as_tuple=True)
    return rows, cols, labels[rows, cols]


def _hidden_states(model, batch: dict) -> torch.Tensor:
    hf = _unwrap(model)
    body = hf.base_model
    out = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
               position_ids=position_ids(batch["attention_mask"]), use_cache=False)
    return out.last_hidden_state


def _head(hf, hidden: torch.Tensor) -> torch.Tensor:
    logits = hf.get_output_embeddings()(hidden).float()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _chunk_logp(hf, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # cross_entropy's fused kernel: same values, ~35% faster than gather - logsumexp with its backward
    return -F.cross_entropy(_head(hf, hidden), targets, reduction="none")


def labelled_hidden(model, batch: dict):
    """Hidden states at the positions that predict labelled tokens: (hidden [N, H], rows, targets)."""
    rows, cols, targets = _labelled(batch)
    return _hidden_states(model, batch)[rows, cols], rows, targets


def sequence_logprobs(model, batch: dict, chunk_size: int = 1024, full_logits: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the labelled tokens of each sequence, and their count (float).

    `full_logits=True` is the naive path (LM head over every position); it exists as the
    independent reference for tests and benchmarks.
    """
    n_seq = batch["input_ids"].shape[0]
    if full_logits:
        return _full_logits_logprobs(model, batch)
    hf = _unwrap(model)
    hidden, rows, targets = labelled_hidden(model, batch)
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and hidden.shape[0] > chunk_size:
            # recompute the chunk's logits in backward instead of keeping them all
            parts.append(checkpoint(_chunk_logp, hf, h, t, use_reentrant=False))
        else:
            parts.append(_chunk_logp(hf, h, t))
    token_logp = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    logp = torch.zeros(n_seq, dtype=torch.float32, device=hidden.device).index_add(0, rows, token_logp)
    count = torch.zeros(n_seq, dtype=torch.float32, device=hidden.device).index_add(
        0, rows, torch.ones_like(token_logp))
    return logp, count


def _full_logits_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=position_ids(batch["attention_mask"]), use_cache=False)
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    logp = F.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1).float()


def labelled_log_softmax(model, batch: dict) -> torch.Tensor:
    """Full next-token log-distributions [N, vocab] at the labelled positions (for KL terms)."""
    hf = _unwrap(model)
    hidden, _, _ = labelled_hidden(model, batch)
    return F.log_softmax(_head(hf, hidden), -1)


def all_positions_log_softmax(model, batch: dict) -> torch.Tensor:
    """Next-token log-distributions [B, L, vocab] at every position, with the model's default position
    ids (the original code's KL term over padded batches; `kl=official`)."""
    hf = _unwrap(model)
    out = hf.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return F.log_softmax(_head(hf, out.last_hidden_state), -1)


@torch.no_grad()
def token_stats(model, batch: dict, chunk_size: int = 1024) -> dict[str, torch.Tensor]:
    """Per labelled token: its log-prob, and the mean and standard deviation of log p over the
    model's next-token distribution (what Min-K%++ normalises by). `rows` maps tokens to sequences."""
    hf = _unwrap(model)
    hidden, rows, targets = labelled_hidden(model, batch)
    logp, mu, sigma = [], [], []
    for start in range(0, hidden.shape[0], chunk_size):
        lp = F.log_softmax(_head(hf, hidden[start:start + chunk_size]), -1)
        p = lp.exp()
        m = (p * lp).sum(-1)
        logp.append(lp.gather(-1, targets[start:start + chunk_size, None]).squeeze(-1))
        mu.append(m)
        sigma.append(((p * lp * lp).sum(-1) - m * m).clamp(min=0).sqrt())
    cat = (lambda xs: torch.cat(xs)) if logp else (lambda xs: hidden.new_zeros(0))
    return {"rows": rows, "logp": cat(logp), "mu": cat(mu), "sigma": cat(sigma)}


class Scorer(torch.nn.Module):
    """Wraps a model so that distributed engines (DDP, FSDP) see the log-prob computation as the
    module's forward: calling the model's body and head outside `forward` would bypass their hooks."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, kind: str = "logp"):
        """kind: "logp" (labelled positions), "full" (naive full-logits path), "dist" (for KL) or
        "padded_dist" (every position, for the original code's KL)."""
        if kind == "dist":
            return labelled_log_softmax(self.model, batch)
        if kind == "padded_dist":
            return all_positions_log_softmax(self.model, batch)
        return sequence_logprobs(self.model, batch, full_logits=kind == "full")
