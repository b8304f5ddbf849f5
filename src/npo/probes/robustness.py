"""Robustness probes: is the forgotten knowledge gone, or only hidden behind a thin layer that a few
relearning steps, weight quantization or a reworded question removes?

Each probe measures the same two forget-set numbers: the mean per-token probability of the true
answers, exp(-average loss), and the ROUGE-L recall of greedy answers.

- relearn: fine-tune on part of the forget set, measure the held-back part (Hu et al. 2024,
  "Jogging the memory of unlearned LLMs"; Lynch et al. 2024, "Eight methods to evaluate robust
  unlearning in LLMs");
- quant: round-to-nearest weight quantization (Zhang et al. 2024, "Catastrophic failure of LLM
  unlearning via quantization");
- paraphrase: the forget questions reworded (Lynch et al. 2024).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random

import numpy as np
import torch

from npo.data.qa import QARecord


def quantize_rtn(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric round-to-nearest quantization per output channel (row), returned dequantized in the
    weight's dtype: scale = max|w_row| / (2^(bits-1) - 1), w -> clamp(round(w / scale)) * scale."""
    if bits < 2:
        raise ValueError(f"bits must be at least 2, got {bits}")
    w = weight.float()
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    return ((w / scale).round().clamp(-qmax, qmax) * scale).to(weight.dtype)


def quantizable(model) -> list[torch.nn.Linear]:
    """Every nn.Linear except the LM head, which quantizers usually keep in full precision (it is
    often tied to the input embeddings, and its error hits every logit)."""
    head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


@contextlib.contextmanager
def quantized(model, bits: int):
    """The model with its linear weights quantized in place; the originals (kept on the CPU) are put
    back on exit, so no second copy of the model lives on the accelerator."""
    layers = quantizable(model)
    saved = [m.weight.detach().to("cpu", copy=True) for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m.weight.copy_(quantize_rtn(m.weight, bits))
        yield model
    finally:
        with torch.no_grad():
            for m, w in zip(layers, saved, strict=True):
                m.weight.copy_(w.to(m.weight.device))


def split_for_relearning(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(indices to relearn on, held-back indices), a seeded random split of n items."""
    if not 0 < fraction < 1:
        raise ValueError(f"relearn fraction must be in (0, 1), got {fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(n * fraction)))
    return sorted(order[:k]), sorted(order[k:])


def recovered(unlearned: float, after: float, reference: float) -> float:
    """Fraction of what unlearning removed that relearning brought back: (after - unlearned) /
    (reference - unlearned); NaN when unlearning did not lower the metric (nothing to recover)."""
    gap = reference - unlearned
    return (after - unlearned) / gap if gap > 1e-6 else math.nan


def summarise(items: dict[str, np.ndarray], idx: list[int] | None = None) -> dict[str, float]:
    """Mean probability and ROUGE-L over the items (all, or those in idx)."""
    sel = slice(None) if idx is None else np.asarray(idx, dtype=int)
    prob, rouge = items["prob"][sel], items["rouge_l"][sel]
    return {"prob": float(prob.mean()), "rouge_l": float(rouge.mean()), "n": int(prob.size)}


@torch.no_grad()
def item_metrics(model, tok, template: str, records: list[QARecord], *, max_length: int, max_new_tokens: int,
                 batch_size: int, paraphrased: bool = False) -> dict[str, np.ndarray]:
    """Per item: p(answer)^(1/tokens) and the ROUGE-L recall of the greedy answer; `paraphrased` asks
    `paraphrased_question` instead of `question`."""
    from npo.eval.metrics import rouge_recalls
    from npo.eval.scoring import generate, prompt_ids, score_texts

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if paraphrased:
        records = [dataclasses.replace(r, question=r.paraphrased_question) for r in records]
    pairs = [(r.question, r.answer) for r in records]
    scores = score_texts(model, tok, template, pairs, max_length, batch_size, device, desc="probe scoring")
    gens = generate(model, tok, prompt_ids(tok, template, records, max_length), max_new_tokens, batch_size, device)
    _, rouge_l = rouge_recalls(gens, [r.answer for r in records])
    model.train(was_training)
    return {"prob": np.array([math.exp(scores[p][0] / scores[p][1]) for p in pairs]),
            "rouge_l": np.asarray(rouge_l, dtype=np.float64)}
