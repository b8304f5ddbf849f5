"""Reference quantities. NPO and DPO need the frozen reference's log-probs of the forget (and idk)
answers only: they never change, so one no-grad pass before training computes them, a float per
example (per token for token-level NPO), and no second model is kept. KL terms need the
reference's whole next-token distribution on fresh batches: with LoRA that is the same model with
the adapter disabled, otherwise a frozen copy. RMU's frozen activations need only the starting
values of the parameters it trains: a copy of those tensors, swapped in for a no-grad pass."""

from __future__ import annotations

import contextlib
import copy

import torch

from npo.data.batches import Tokenized, collate
from npo.logprobs import (
    all_positions_log_softmax,
    labelled_log_softmax,
    layer_hidden,
    sequence_logprobs,
    token_logprobs,
)
from npo.modeling import is_peft


@torch.no_grad()
def reference_logprobs(model, examples: list[Tokenized], pad_id: int, batch_size: int, device,
                       full_logits: bool = False) -> torch.Tensor:
    """Summed log-prob of each example's labelled tokens, in example order (float32, CPU)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = torch.empty(len(examples), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        logp, _ = sequence_logprobs(model, batch, full_logits=full_logits)
        out[idx] = logp.float().cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def reference_token_logprobs(model, examples: list[Tokenized], pad_id: int, batch_size: int, device
                             ) -> list[torch.Tensor]:
    """Per-token log-probs of each example's labelled tokens, one tensor per example in example
    order (float32, CPU)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[torch.Tensor] = [torch.empty(0)] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        logp, rows = token_logprobs(model, batch)
        logp, rows = logp.float().cpu(), rows.cpu()
        for k, i in enumerate(idx):
            out[i] = logp[rows == k]
    model.train(was_training)
    return out


class OnlineReference:
    """The reference model run on the fly (KL terms, and the 'online' check path)."""

    def __init__(self, model, lora: bool, full_logits: bool = False):
        self.lora, self.full_logits = lora and is_peft(model), full_logits
        self.model = model if self.lora else copy.deepcopy(model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def _active(self):
        if self.lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model

    @torch.no_grad()
    def logprobs(self, batch: dict) -> torch.Tensor:
        with self._active() as m:
            return sequence_logprobs(m, batch, full_logits=self.full_logits)[0]

    @torch.no_grad()
    def log_softmax(self, batch: dict) -> torch.Tensor:
        with self._active() as m:
            return labelled_log_softmax(m, batch)

    @torch.no_grad()
    def padded_log_softmax(self, batch: dict) -> torch.Tensor:
        with self._active() as m:
            return all_positions_log_softmax(m, batch)

    def token_logprobs(self, batch: dict) -> torch.Tensor:
        with self._active() as m:
            return token_logprobs(m, batch)[0]


class FrozenParams:
    """The model as it was before training, for RMU's frozen activations, without a second copy of
    the model: under LoRA the adapter is disabled; otherwise only the starting values of the
    trained parameters are kept (for RMU's reference setting, 3 of a 7B model's 224 weight
    matrices) and swapped in for a no-grad pass. Engines that shard parameters (FSDP, DeepSpeed)
    own the storage, so there (`copy=True`) a frozen copy of the whole model is kept instead."""

    def __init__(self, model, lora: bool, copy_model: bool = False):
        self.model, self.lora = model, lora and is_peft(model)
        self.copy = None if self.lora or not copy_model else copy.deepcopy(model).eval().requires_grad_(False)
        self.start = [] if self.lora or self.copy is not None else [
            (p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def _active(self):
        if self.lora:
            with self.model.disable_adapter():
                yield self.model
            return
        if self.copy is not None:
            yield self.copy
            return
        current = [p.data for p, _ in self.start]
        try:
            for p, value in self.start:
                p.data = value
            yield self.model
        finally:
            for (p, _), value in zip(self.start, current, strict=True):
                p.data = value

    @torch.no_grad()
    def hidden(self, batch: dict, layer: int, positions: str) -> torch.Tensor:
        with self._active() as m:
            was_training = m.training
            m.eval()  # a frozen model: no dropout
            try:
                return layer_hidden(m, batch, layer, positions)
            finally:
                m.train(was_training)
