"""What a loss term sees of one micro-batch: its examples in each data set, the model's outputs on
them, the reference's, and the micro-batch's share of the window (the examples of one optimizer
step). Batches are collated once per set and micro-batch; model calls go through the trainer's
`Scorer`, so distributed engines see them as the module's forward.
"""

from __future__ import annotations

import torch

from npo.data.batches import collate, collate_padded
from npo.logprobs import labelled_positions


class Micro:
    def __init__(self, trainer, idx: dict[str, list[int]], window: dict[str, list[int]], logged: dict):
        self.t, self.cfg, self.idx, self.window = trainer, trainer.cfg, idx, window
        self._batches: dict[str, dict] = {}
        self._logged = logged

    # -- data

    def batch(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._batches:
            examples = self.t.sets[name]
            rows = collate([examples[i] for i in self.idx[name]], self.t.tok.pad_token_id)
            self._batches[name] = {k: v.to(self.t.acc.device) for k, v in rows.items()}
        return self._batches[name]

    def padded_batch(self, name: str) -> dict[str, torch.Tensor]:
        """The micro-batch padded to max_length as the original code pads it (`kl=official`)."""
        key = name + ":padded"
        if key not in self._batches:
            examples = [self.t.sets[name][i] for i in self.idx[name]]
            rows = collate_padded(examples, self.t.tok.eos_token_id if self.t.tok.eos_token_id is not None
                                  else self.t.tok.pad_token_id, self.t.tok.eos_token_id, self.cfg.max_length)
            self._batches[key] = {k: v.to(self.t.acc.device) for k, v in rows.items()}
        return self._batches[key]

    def examples(self, name: str) -> int:
        return len(self.idx[name])

    def window_examples(self, name: str) -> int:
        return len(self.window[name])

    def example_share(self, name: str) -> float:
        """This micro-batch's share of the window's examples (scales per-example means)."""
        return len(self.idx[name]) / len(self.window[name])

    def tokens(self, name: str, skip_first: int = 0) -> int:
        """Labelled tokens of this micro-batch (`skip_first`: leaving out each answer's first ones)."""
        return sum(max(0, self.t.sets[name][i].n_labels - skip_first) for i in self.idx[name])

    def window_tokens(self, name: str, skip_first: int = 0) -> int:
        return max(1, sum(max(0, self.t.sets[name][i].n_labels - skip_first) for i in self.window[name]))

    def token_share(self, name: str, skip_first: int = 0):
        """What scales a token mean over this micro-batch. token_mean=window: its share of the window's
        labelled tokens (the window's token mean, whatever the split into micro-batches). micro (the
        original code, HF/DeepSpeed): its share of the window's examples, so micro-batch token means
        are averaged; idk_rt's refusals and retain answers then share one token mean, as the
        original concatenates them into one batch."""
        if self.cfg.token_mean == "window":
            return torch.tensor(float(self.tokens(name, skip_first))) / self.window_tokens(name, skip_first)
        share = self.example_share(name)
        if name in ("idk", "retain") and self.t.method.forget.reads == "idk":
            return share * self.tokens(name) / max(1, self.tokens("idk") + self.tokens("retain"))
        return share

    def targets(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(target id, row) of every labelled token, in the order of the per-token outputs below."""
        rows, _, targets = labelled_positions(self.batch(name))
        return targets, rows

    # -- model outputs (with gradients)

    def logp(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-prob of each example's labelled tokens, and their count."""
        return self.t.scorer(self.batch(name), "full" if self.cfg.logits == "full" else "logp")

    def dist(self, name: str) -> torch.Tensor:
        """Next-token log-distributions [labelled tokens, vocab] (for KL terms)."""
        return self.t.scorer(self.batch(name), "dist")

    def token_logp(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob of every labelled token [N] and its row [N] (for token-weighted objectives)."""
        return self.t.scorer(self.batch(name), "tokens_full" if self.cfg.logits == "full" else "tokens")

    def logits(self, name: str) -> torch.Tensor:
        """Next-token logits [labelled tokens, vocab]."""
        return self.t.scorer(self.batch(name), "logits")

    def hidden(self, name: str, layer: int, positions: str = "labelled") -> torch.Tensor:
        """Output of decoder block `layer` at the labelled tokens [N, H] (or every position: "all")."""
        return self.t.scorer(self.batch(name), "hidden", layer=layer, positions=positions)

    # -- reference (no gradients)

    def ref_logp(self, name: str) -> torch.Tensor:
        """The reference's summed log-probs of this micro-batch's examples: cached before training,
        or recomputed by a frozen copy with `reference=online` (the check path)."""
        if self.t.online is not None and self.cfg.reference == "online":
            return self.t.online.logprobs(self.batch(name))
        return self.t.cache[name][self.idx[name]].to(self.t.acc.device)

    def padded_dist(self, name: str) -> torch.Tensor:
        """Next-token log-distributions [B, max_length, vocab] at every position of the padded batch."""
        return self.t.scorer(self.padded_batch(name), "padded_dist")

    def ref_dist(self, name: str) -> torch.Tensor:
        return self.t.online.log_softmax(self.batch(name))

    def ref_padded_dist(self, name: str) -> torch.Tensor:
        return self.t.online.padded_log_softmax(self.padded_batch(name))

    def ref_token_logp(self, name: str) -> torch.Tensor:
        """The reference's per-token log-probs [N], in `token_logp` order: cached before training
        (one NaN-padded row per example), or recomputed with `reference=online`."""
        if self.t.online is not None and self.cfg.reference == "online":
            return self.t.online.token_logprobs(self.batch(name))
        rows = self.t.cache[f"{name}_tokens"][self.idx[name]]
        return rows[~rows.isnan()].to(self.t.acc.device)  # row-major, like the labelled tokens

    def ref_hidden(self, name: str, layer: int, positions: str = "labelled") -> torch.Tensor:
        """`hidden` of the model with its trained parameters at their starting values (RMU)."""
        return self.t.frozen.hidden(self.batch(name), layer, positions)

    # -- method state

    @property
    def state(self) -> dict:
        """The method's state across steps (PDU's dual variable, RMU's control vector); in checkpoints."""
        return self.t.method_state

    @property
    def prepared(self) -> dict:
        """Values a term computed over the whole window before this step's micro-batches (KTO's KL)."""
        return self.t.prepared

    # -- logging

    def log(self, key: str, value: torch.Tensor) -> None:
        """Add a window-normalised quantity to the step's record (summed over micro-batches)."""
        self._logged[key] = self._logged.get(key, 0.0) + value.detach()
