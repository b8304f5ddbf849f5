"""Batched model calls shared by every benchmark and probe: scoring (question, answer) texts and
greedy generation. One forward per distinct text, batched by length; generation batched with left
padding, prompts sorted by length, stopped at EOS. `Dist` shards items across processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from npo.data.batches import Tokenized, collate, tokenize_qa
from npo.data.qa import QARecord
from npo.errors import NpoError
from npo.eval.decode import fast_greedy_ok, greedy_decode
from npo.logprobs import labelled_log_softmax, sequence_logprobs, token_stats
from npo.progress import progress


@dataclass
class Dist:
    """What a distributed run needs; a single process uses the defaults."""

    rank: int = 0
    world: int = 1
    gather = None  # callable(list) -> list of every process's items, in process order

    @classmethod
    def from_accelerator(cls, acc) -> Dist:
        dist = cls(acc.process_index, acc.num_processes)
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            dist.gather = gather_object
        return dist


@torch.no_grad()
def score_texts(model, tok, template: str, pairs: list[tuple[str, str]], max_length: int, batch_size: int,
                device, desc: str = "scoring", rank: int = 0) -> dict[tuple[str, str], tuple[float, int]]:
    """(question, answer) -> (summed log-prob, token count), one forward per distinct pair."""
    unique = sorted(set(pairs))
    examples = [tokenize_qa(tok, template, q, a, max_length, where=f"eval item '{q[:40]}'") for q, a in unique]
    order = sorted(range(len(unique)), key=lambda i: len(examples[i].input_ids))
    out = {}
    bar = progress(len(order), desc, rank == 0)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], tok.pad_token_id).items()}
        logp, n = sequence_logprobs(model, batch)
        for i, lp, cnt in zip(idx, logp.tolist(), n.tolist(), strict=True):
            out[unique[i]] = (lp, int(cnt))
        bar.update(len(idx))
    bar.close()
    return out


def prompt_ids(tok, template: str, records: list[QARecord], max_length: int) -> list[list[int]]:
    """Each question's prompt tokens exactly as they stand before the answer in the training text.
    Tokenizing the prompt string alone can differ at the boundary (a trailing space becomes its own
    token, which the model never saw before an answer)."""
    out = []
    for rec in records:
        ex = tokenize_qa(tok, template, rec.question, rec.answer, max_length, where=f"eval item '{rec.question[:40]}'")
        out.append(list(ex.input_ids[:ex.n_prompt]))
    return out


def _decode_batch(model, tok, batch: dict, limit: dict, sample_seed: int | None, fast: bool) -> torch.Tensor:
    """New tokens of one left-padded batch: `greedy_decode`, or `model.generate` (sampling, a
    `max_length` cap, or a generation config with logits processors)."""
    if fast:
        return greedy_decode(model, batch["input_ids"], batch["attention_mask"], limit["max_new_tokens"],
                             tok.eos_token_id, tok.pad_token_id)
    if sample_seed is not None:
        torch.manual_seed(sample_seed)
    gen = model.generate(**batch, **limit, do_sample=sample_seed is not None,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return gen[:, batch["input_ids"].shape[1]:]


@torch.no_grad()
def generate(model, tok, encoded: list[list[int]], max_new_tokens: int, batch_size: int, device,
             rank: int = 0, *, max_length: int | None = None, keep_order: bool = False,
             sample_seed: int | None = None, raw: bool = False) -> list[str]:
    """Continuations of token-id prompts, batched with left padding, stopped at EOS: greedy, prompts
    sorted by length, `max_new_tokens` each (the default), by `greedy_decode` (`model.generate`'s
    tokens, finished rows dropped) unless the model's generation config adds logits processors.

    The original evaluators' variants, all through `model.generate`: `max_length` caps prompt +
    continuation of the left-padded batch instead (so a batch's longest prompt decides its new
    tokens), `keep_order` batches the prompts as given, `sample_seed` samples with the model's
    generation config after `torch.manual_seed(sample_seed)` before every batch (the NPO authors'
    evaluator). `raw`: decoded with special tokens skipped and nothing else changed (MUSE's clean-up
    is eval/muse_metrics.py's); by default stripped, as TOFU's scoring expects."""
    side = tok.padding_side
    tok.padding_side = "left"
    order = list(range(len(encoded))) if keep_order else sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [""] * len(encoded)
    limit = {"max_length": max_length} if max_length else {"max_new_tokens": max_new_tokens}
    fast = not max_length and sample_seed is None and fast_greedy_ok(model)
    bar = progress(len(order), "generating", rank == 0)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
            new = _decode_batch(model, tok, batch, limit, sample_seed, fast)
            texts = tok.batch_decode(new, skip_special_tokens=True, **({"clean_up_tokenization_spaces": False} if raw else {}))
            for i, text in zip(idx, texts, strict=True):
                out[i] = text if raw else text.strip()
            bar.update(len(idx))
    finally:
        tok.padding_side = side
        bar.close()
    return out


@torch.no_grad()
def token_level(model, tok, template: str, pairs: list[tuple[str, str]], max_length: int, batch_size: int
                ) -> list[dict[str, np.ndarray]]:
    """Per (question, answer): the answer tokens' log-probs and the next-token distributions' mean and
    std of log p, as numpy arrays (labelled tokens: the answer and its EOS)."""
    device = next(model.parameters()).device
    examples = [tokenize_qa(tok, template, q, a, max_length, where=f"probe item '{q[:40]}'") for q, a in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(examples[i].input_ids))
    out: list[dict] = [{}] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], tok.pad_token_id).items()}
        stats = {k: v.float().cpu().numpy() if k != "rows" else v.cpu().numpy()
                 for k, v in token_stats(model, batch).items()}
        for row, i in enumerate(idx):
            sel = stats["rows"] == row
            out[i] = {k: stats[k][sel] for k in ("logp", "mu", "sigma")}
    return out


def gather_in_order(local: dict[str, list], indices: list[int], n_items: int, dist: Dist) -> dict[str, list]:
    """Columns of per-item values from every process (each held the items `indices`), in item order."""
    if dist.world == 1:
        return local
    rows = [[local[k][i] for k in local] for i in range(len(indices))]
    everyone = dist.gather([(indices, rows)])
    keys = list(local)
    merged = [None] * n_items
    for shard_indices, shard_rows in everyone:
        for i, row in zip(shard_indices, shard_rows, strict=True):
            merged[i] = row
    return {k: [row[c] for row in merged] for c, k in enumerate(keys)}


def shard(n_items: int, dist: Dist, block: int = 1) -> list[int]:
    """The items one process handles: every `world`-th block of `block` consecutive items."""
    starts = range(dist.rank * block, n_items, dist.world * block)
    return [i for start in starts for i in range(start, min(start + block, n_items))]


@torch.no_grad()
def text_token_logprobs(model, encoded: list[list[int]], pad_id: int, batch_size: int, device) -> list[np.ndarray]:
    """Per raw text (token ids, BOS first): the log-prob of every token after the first, as numpy."""
    examples = [Tokenized(tuple(ids), 1, False) for ids in encoded]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[np.ndarray] = [np.zeros(0)] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        stats = token_stats(model, batch)
        rows, logp = stats["rows"].cpu().numpy(), stats["logp"].float().cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = logp[rows == row]
    return out


def _window(context: tuple[int, ...], continuation: tuple[int, ...], max_length: int) -> Tokenized:
    """context + continuation, cut from the left to max_length + 1 tokens (the last is only a target),
    the continuation labelled."""
    if not 0 < len(continuation) <= max_length:
        raise NpoError(f"a continuation of {len(continuation)} tokens does not fit max_length {max_length}")
    ids = (tuple(context) + tuple(continuation))[-(max_length + 1):]
    return Tokenized(ids, len(ids) - len(continuation), len(context) + len(continuation) > max_length + 1)


def _target_only_last(windows: list[Tokenized], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded batch whose last token of each row is masked: it is a label only, and no other
    position attends to it (causal), so the numbers are unchanged and positions stay below the limit."""
    batch = collate(windows, pad_id)
    rows = torch.arange(len(windows))
    batch["attention_mask"][rows, torch.tensor([len(w.input_ids) - 1 for w in windows])] = 0
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def choice_logprobs(model, requests: list[list[tuple[tuple[int, ...], tuple[int, ...]]]], max_length: int,
                    batch_size: int, device, pad_id: int, rank: int = 0, share_context: bool = True
                    ) -> list[list[float]]:
    """Per question, the summed log-prob of each choice's continuation tokens after its context;
    `requests[q]` holds question q's (context ids, continuation ids), one per choice.

    Sequences are cut from the left to max_length + 1 tokens, as lm-evaluation-harness does; the
    last token is only a target, so it is masked out of the model's input (the model sees at most
    max_length positions, as there). When a question's choices share one context and are one token each
    (" A", " B", ...), one forward serves them all: the next-token distribution after the context
    (`share_context`). Otherwise each choice is a sequence of its own, a question's choices in the
    same batch. A context must hold at least one token."""
    out = [[0.0] * len(r) for r in requests]
    shared, single = [], []  # (question, window, choice tokens) / (question, [(choice, window), ...])
    for qi, reqs in enumerate(requests):
        if share_context and len({c for c, _ in reqs}) == 1 and all(len(k) == 1 for _, k in reqs):
            shared.append((qi, _window(reqs[0][0], reqs[0][1], max_length), [k[0] for _, k in reqs]))
        else:
            single.append((qi, [(ci, _window(c, k, max_length)) for ci, (c, k) in enumerate(reqs)]))
    if any(w.n_prompt < 1 for _, w, _ in shared) or any(w.n_prompt < 1 for _, ws in single for _, w in ws):
        raise ValueError("a context is empty: its continuation's first token has nothing to follow")
    bar = progress(len(requests), "scoring choices", rank == 0)
    shared.sort(key=lambda item: len(item[1].input_ids))
    for start in range(0, len(shared), batch_size):
        part = shared[start:start + batch_size]
        batch = _target_only_last([w for _, w, _ in part], pad_id, device)
        logdist = labelled_log_softmax(model, batch)  # one labelled token per row, rows in order
        for row, (qi, _, tokens) in enumerate(part):
            out[qi] = logdist[row, tokens].tolist()
        bar.update(len(part))
    single.sort(key=lambda item: max(len(w.input_ids) for _, w in item[1]))
    start = 0
    while start < len(single):
        part, n = [], 0
        while start < len(single) and (not part or n + len(single[start][1]) <= batch_size):
            part.append(single[start])
            n += len(single[start][1])
            start += 1
        flat = [(qi, ci, w) for qi, ws in part for ci, w in ws]
        logp, _ = sequence_logprobs(model, _target_only_last([w for _, _, w in flat], pad_id, device))
        for (qi, ci, _), lp in zip(flat, logp.tolist(), strict=True):
            out[qi][ci] = lp
        bar.update(len(part))
    bar.close()
    return out

