"""The one log-prob function: (model, batch) -> per-sequence summed log-prob of the labelled tokens,
and the per-token views some objectives need (per-token log-probs, logits at labelled positions,
hidden states after one decoder block).

The LM head and an fp32 log-softmax run only on labelled positions, in chunks, so a 128k
vocabulary never materialises a (batch x length x vocab) fp32 tensor. Position ids follow the
attention mask, so left and right padding give the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from npo.data.batches import IGNORE
from npo.errors import NpoError

# labelled positions per LM-head chunk without gradients (scoring, reference passes): 256 x 32k fp32 logits
# are 33 MB; larger chunks are no faster
NO_GRAD_CHUNK = 256


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


class _TargetLogp(torch.autograd.Function):
    """log_softmax(logits)[i, targets[i]] keeping one [N, V] buffer for backward: the log-softmax is
    exponentiated in place into the probabilities p, which backward turns in place into the logits'
    gradient g * (onehot - p). cross_entropy keeps the log-softmax and builds two more [N, V] tensors
    in backward (a zero-filled one-hot gradient, then its log-softmax backward). Same forward values
    as cross_entropy (the same log-softmax kernel); the buffer is consumed, so the graph cannot be
    backpropagated twice."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lsm = torch.log_softmax(logits, -1)
        out = lsm.gather(-1, targets[:, None]).squeeze(-1)
        ctx.save_for_backward(lsm.exp_(), targets)
        ctx.consumed = False
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("npo.logprobs: the labelled log-probs' graph was already backpropagated "
                               "(its probability buffer is reused in place)")
        ctx.consumed = True
        probs, targets = ctx.saved_tensors
        grad = grad.to(probs.dtype)[:, None]
        return probs.mul_(-grad).scatter_add_(-1, targets[:, None], grad), None


def _chunk_logp(hf, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = _head(hf, hidden)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TargetLogp.apply(logits, targets)
    # no graph: cross_entropy's fused kernel (the same log-softmax values)
    return -F.cross_entropy(logits, targets, reduction="none")


def labelled_hidden(model, batch: dict):
    """Hidden states at the positions that predict labelled tokens: (hidden [N, H], rows, targets)."""
    rows, cols, targets = _labelled(batch)
    return _hidden_states(model, batch)[rows, cols], rows, targets


def labelled_positions(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, predicting position, target id) of every labelled token, in row-major order: the order
    of every per-token tensor below."""
    return _labelled(batch)


def token_logprobs(model, batch: dict, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every labelled token [N] (fp32) and its row [N], in `labelled_positions` order."""
    hf = _unwrap(model)
    hidden, rows, targets = labelled_hidden(model, batch)
    if not torch.is_grad_enabled():  # nothing kept for backward: small chunks bound the [chunk, vocab] logits
        chunk_size = min(chunk_size, NO_GRAD_CHUNK)
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and hidden.shape[0] > chunk_size:
            # recompute the chunk's logits in backward instead of keeping them all
            parts.append(checkpoint(_chunk_logp, hf, h, t, use_reentrant=False))
        else:
            parts.append(_chunk_logp(hf, h, t))
    token_logp = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    return token_logp, rows


def sequence_logprobs(model, batch: dict, chunk_size: int = 1024, full_logits: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the labelled tokens of each sequence, and their count (float).

    `full_logits=True` is the naive path (LM head over every position); it exists as the
    independent reference for tests and benchmarks.
    """
    n_seq = batch["input_ids"].shape[0]
    if full_logits:
        return _full_logits_logprobs(model, batch)
    token_logp, rows = token_logprobs(model, batch, chunk_size)
    logp = torch.zeros(n_seq, dtype=torch.float32, device=token_logp.device).index_add(0, rows, token_logp)
    count = torch.zeros(n_seq, dtype=torch.float32, device=token_logp.device).index_add(
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


def full_token_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` by the naive path (LM head over every position), for `logits=full`."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=position_ids(batch["attention_mask"]), use_cache=False)
    rows, cols, targets = _labelled(batch)
    logsm = F.log_softmax(out.logits[:, :-1].float(), -1)
    return logsm[rows, cols].gather(-1, targets[:, None]).squeeze(-1), rows


def labelled_logits(model, batch: dict) -> torch.Tensor:
    """Next-token logits [N, vocab] (fp32, after any soft-capping) at the labelled positions."""
    hf = _unwrap(model)
    hidden, _, _ = labelled_hidden(model, batch)
    return _head(hf, hidden)


def labelled_log_softmax(model, batch: dict) -> torch.Tensor:
    """Full next-token log-distributions [N, vocab] at the labelled positions (for KL terms)."""
    return F.log_softmax(labelled_logits(model, batch), -1)


def decoder_blocks(model) -> tuple[torch.nn.Module, str]:
    """(module, attribute) of the model's transformer blocks: the ModuleList holding one block per
    hidden layer (`model.layers` in Llama/Mistral/Qwen, `transformer.h` in GPT-2)."""
    hf = _unwrap(model)
    body, n = hf.base_model, getattr(hf.config, "num_hidden_layers", None)
    for name, child in body.named_children():
        if isinstance(child, torch.nn.ModuleList) and len(child) == n:
            return body, name
    raise NpoError(f"cannot find the decoder blocks of {type(hf).__name__} (a ModuleList of "
                   f"num_hidden_layers={n} blocks in its base model)")


def layer_hidden(model, batch: dict, layer: int, positions: str = "labelled") -> torch.Tensor:
    """The output of decoder block `layer` (0-based; the residual stream that HF reports as
    `hidden_states[layer + 1]`, before any final norm) at the labelled tokens' own positions [N, H]
    in row-major order, or at every position of the padded batch (`positions="all"`, [B*T, H]).

    The blocks after `layer` are not run: they are taken out of the block list for the call, so
    a 32-layer model asked for layer 7 runs 8 blocks and builds no graph for the rest."""
    body, name = decoder_blocks(model)
    blocks = getattr(body, name)
    if not 0 <= layer < len(blocks):
        raise NpoError(f"layer {layer} does not exist: the model has {len(blocks)} decoder blocks (0-based)")
    captured = []
    handle = blocks[layer].register_forward_hook(
        lambda _m, _args, out: captured.append(out[0] if isinstance(out, tuple) else out))
    setattr(body, name, blocks[:layer + 1])
    try:
        body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             position_ids=position_ids(batch["attention_mask"]), use_cache=False)
    finally:
        setattr(body, name, blocks)
        handle.remove()
    hidden = captured[0]
    if positions == "all":
        return hidden.reshape(-1, hidden.shape[-1])
    return hidden[batch["labels"] != IGNORE]


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

    def forward(self, batch: dict, kind: str = "logp", layer: int = 0, positions: str = "labelled"):
        """kind: "logp" (labelled positions), "full" (naive full-logits path), "dist" (for KL),
        "padded_dist" (every position, for the original code's KL), "tokens" / "tokens_full"
        (per-token log-probs), "logits", or "hidden" (after block `layer`)."""
        if kind == "dist":
            return labelled_log_softmax(self.model, batch)
        if kind == "padded_dist":
            return all_positions_log_softmax(self.model, batch)
        if kind == "tokens":
            return token_logprobs(self.model, batch)
        if kind == "tokens_full":
            return full_token_logprobs(self.model, batch)
        if kind == "logits":
            return labelled_logits(self.model, batch)
        if kind == "hidden":
            return layer_hidden(self.model, batch, layer, positions)
        return sequence_logprobs(self.model, batch, full_logits=kind == "full")
