"""Reference quantities. NPO and DPO need the frozen reference's log-probs of the forget (and idk)
answers only: they never change, so one no-grad pass before training computes them, a float per
example, and no second model is kept. KL terms need the reference's whole next-token distribution
on fresh retain batches: with LoRA that is the same model with the adapter disabled, otherwise a
frozen copy."""

from __future__ import annotations

import contextlib
import copy

import torch

from npo.data.batches import Tokenized, collate
from npo.logprobs import all_positions_log_softmax, labelled_log_softmax, sequence_logprobs
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
