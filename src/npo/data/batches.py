"""Tokenization with answer-only labels, length-grouped batching, dynamic padding.

Labels cover the answer tokens and the EOS that ends the answer (the model must learn to stop);
prompt and padding positions are -100. The prompt/answer boundary is read off the tokenization
of the full text (character offsets), since tokenizing the prompt alone can split the boundary
differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from npo.data.templates import answer_prefix, render_prompt
from npo.errors import DataError

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: tuple[int, ...]
    n_prompt: int  # tokens before the first labelled one
    truncated: bool

    @property
    def n_labels(self) -> int:
        return len(self.input_ids) - self.n_prompt


def ensure_pad_token(tokenizer) -> None:
    """A tokenizer without a pad token gets one: the unk token, or a new `<pad>` (never EOS, whose
    real occurrences must stay labelled)."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})


def _split_ids(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt+answer and the index of the first answer token."""
    text = prompt + answer
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        # first token that ends inside the answer; special tokens have (0, 0) offsets
        n_prompt = next((i for i, (s, e) in enumerate(offsets) if e > len(prompt) and e > s), len(ids))
        return ids, n_prompt
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return list(prompt_ids) + list(answer_ids), len(prompt_ids)


def tokenize_qa(tokenizer, template: str, question: str, answer: str, max_length: int,
                where: str = "example") -> Tokenized:
    """Prompt + answer + EOS; truncation keeps the prompt and cuts the answer."""
    prompt = render_prompt(template, question, tokenizer)
    ids, n_prompt = _split_ids(tokenizer, prompt, answer_prefix(template) + answer)
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    if n_prompt >= max_length:
        raise DataError(where, f"prompt is {n_prompt} tokens, not shorter than max_length {max_length}",
                        field="question")
    truncated = len(ids) > max_length
    return Tokenized(tuple(ids[:max_length]), n_prompt, truncated)


def collate(examples: list[Tokenized], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest example of this batch (dynamic padding)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        start = width - n if padding_side == "left" else 0
        ids = torch.tensor(ex.input_ids, dtype=torch.long)
        input_ids[row, start:start + n] = ids
        mask[row, start:start + n] = 1
        labels[row, start + ex.n_prompt:start + n] = ids[ex.n_prompt:]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def collate_padded(examples: list[Tokenized], pad_id: int, eos_id: int | None, width: int) -> dict[str, torch.Tensor]:
    """The NPO authors' training batches: right-padded to `width` with `pad_id` (their pad is EOS), the
    answer's closing EOS counted as padding in the attention mask (they append it as the first pad)."""
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        ids = ex.input_ids[:width]
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        real = len(ids) - (not ex.truncated and eos_id is not None and ids[-1] == eos_id)
        mask[row, :real] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def length_grouped_order(lengths: list[int], batch_size: int, generator: torch.Generator,
                         group: int = 16) -> list[list[int]]:
    """One epoch of batches: shuffle, sort by length inside mega-batches of `group` batches, then
    shuffle the batch order. Padding stays small and the order stays random."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    mega = batch_size * group
    batches = []
    for start in range(0, len(perm), mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def random_order(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches in plain random order (the naive baseline of the benchmarks)."""
    perm = torch.randperm(n, generator=generator).tolist()
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


class BatchStream:
    """An endless, seeded stream of length-grouped batches over one dataset: each step draws a fresh
    batch, so a forget batch meets a different retain batch every epoch. Its state is one integer
    pair (epoch, position), so a resumed run continues the same stream."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.epoch, self.position = 0, 0
        self._batches = self._epoch_batches(0)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return length_grouped_order(self.lengths, self.batch_size, g)

    def next(self) -> list[int]:
        if self.position >= len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        batch = self._batches[self.position]
        self.position += 1
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._batches = self._epoch_batches(self.epoch)


class ShuffledStream:
    """The original code's data order: each pass over the examples the permutation a
    `DataLoader(shuffle=True, generator=Generator().manual_seed(seed))` draws, and every window exactly `window` examples long, running on
    into the next pass (HF Trainer's accumulation continues across epochs). No length grouping.
    State: (pass, position); a resumed stream replays the passes' permutations from the seed."""

    def __init__(self, n: int, window: int, seed: int):
        self.n, self.batch_size, self.seed = n, window, seed
        self.load_state({"epoch": 0, "position": 0})

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = list(self._sampler)
            take = self._order[self.position:self.position + self.batch_size - len(out)]
            out += take
            self.position += len(take)
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        from torch.utils.data import DataLoader

        # one batch per pass: the loader's permutation (it also draws a worker seed from the generator)
        self._sampler = _Passes(DataLoader(range(self.n), batch_size=self.n, shuffle=True,
                                           generator=torch.Generator().manual_seed(self.seed)))
        for _ in range(state["epoch"] + 1):
            self._order = list(self._sampler)
        self.epoch, self.position = state["epoch"], state["position"]


class _Passes:
    """Iterating gives the next pass's permutation of a one-batch-per-pass DataLoader."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):  # a whole pass, as a training loop exhausts it (the sampler draws once more at its end)
        return iter([i for batch in self.loader for i in batch.tolist()])
