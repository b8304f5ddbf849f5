"""Model-side TOFU evaluation: per-item statistics in the official log format.

One forward per distinct (prompt, answer) text, batched by length; greedy generation batched with
left padding, prompts sorted by length, stopped at EOS. Items are sharded across processes and
gathered back in order, so N processes write the same logs as one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from npo.data.batches import collate, tokenize_qa
from npo.data.qa import QARecord
from npo.data.templates import render_prompt
from npo.eval.metrics import rouge_recalls
from npo.logprobs import sequence_logprobs
from npo.runtime import progress

log = logging.getLogger("npo")

# set name -> (data split, official log file name); the forget split is filled in per run
EVAL_SETS = {
    "retain": ("retain_perturbed", "eval_log.json"),
    "forget": ("{forget}_perturbed", "eval_log_forget.json"),
    "real_authors": ("real_authors_perturbed", "eval_real_author_wo_options.json"),
    "world_facts": ("world_facts_perturbed", "eval_real_world_wo_options.json"),
}
PROTOCOL_ITEMS = {"legacy300": 300, "full": None}


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


def base_answer(set_name: str, rec: QARecord) -> str:
    """The answer the truth ratio compares against: the paraphrase on forget/retain, the answer itself
    on real authors and world facts (which have no paraphrase)."""
    if set_name in ("forget", "retain") and rec.paraphrased_answer:
        return rec.paraphrased_answer
    return rec.answer


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


@torch.no_grad()
def generate(model, tok, encoded: list[list[int]], max_new_tokens: int, batch_size: int, device,
             rank: int = 0) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding, sorted by length, stopped
    at EOS."""
    side = tok.padding_side
    tok.padding_side = "left"
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [""] * len(encoded)
    bar = progress(len(order), "generating", rank == 0)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = gen[:, batch["input_ids"].shape[1]:]
            for i, text in zip(idx, tok.batch_decode(new, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
            bar.update(len(idx))
    finally:
        tok.padding_side = side
        bar.close()
    return out


def item_log(set_name: str, records: list[QARecord], scores: dict, prompts: list[str],
             generations: list[str]) -> dict[str, list]:
    """The official per-item keys for one eval set (list variant)."""
    keys = ("avg_gt_loss", "gt_loss", "num_token_gt", "avg_paraphrased_loss", "paraphrased_loss",
            "num_token_paraphrased", "average_perturb_loss", "perturb_loss", "num_token_perturb",
            "rouge1_recall", "rougeL_recall", "generated_text")
    logs: dict[str, list] = {k: [] for k in keys}
    r1, rl = rouge_recalls(generations, [r.answer for r in records])
    for i, rec in enumerate(records):
        lp, n = scores[(rec.question, rec.answer)]
        logs["gt_loss"].append(-lp)
        logs["num_token_gt"].append(n)
        logs["avg_gt_loss"].append(-lp / n)
        lp, n = scores[(rec.question, base_answer(set_name, rec))]
        logs["paraphrased_loss"].append(-lp)
        logs["num_token_paraphrased"].append(n)
        logs["avg_paraphrased_loss"].append(-lp / n)
        perturbed = [scores[(rec.question, p)] for p in rec.perturbed_answer]
        logs["perturb_loss"].append([-lp for lp, _ in perturbed])
        logs["num_token_perturb"].append([n for _, n in perturbed])
        logs["average_perturb_loss"].append([-lp / n for lp, n in perturbed])
        logs["rouge1_recall"].append(r1[i])
        logs["rougeL_recall"].append(rl[i])
        logs["generated_text"].append([prompts[i], generations[i], rec.answer])
    return logs


def evaluate_sets(model, tok, template: str, sets: dict[str, list[QARecord]], *, max_length: int = 512,
                  max_new_tokens: int = 200, batch_size: int = 16, dist: Dist | None = None) -> dict[str, dict]:
    """Per-item logs for each named set. Each process handles every `world`-th item of each set;
    the gathered logs are in the original item order."""
    dist = dist or Dist()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    shards = {name: recs[dist.rank::dist.world] for name, recs in sets.items()}
    pairs = [(r.question, a) for name, recs in shards.items() for r in recs
             for a in {r.answer, base_answer(name, r), *r.perturbed_answer}]
    scores = score_texts(model, tok, template, pairs, max_length, batch_size, device, rank=dist.rank)
    ids = {name: prompt_ids(tok, template, recs, max_length) for name, recs in shards.items()}
    prompts = {name: [render_prompt(template, r.question, tok) for r in recs] for name, recs in shards.items()}
    flat = [p for name in shards for p in ids[name]]
    gens_flat = generate(model, tok, flat, max_new_tokens, batch_size, device, rank=dist.rank)
    out, start = {}, 0
    for name, recs in shards.items():
        gens = gens_flat[start:start + len(recs)]
        start += len(recs)
        local = item_log(name, recs, scores, prompts[name], gens)
        out[name] = _gather_in_order(local, len(sets[name]), dist)
    model.train(was_training)
    return out


def _gather_in_order(local: dict[str, list], n_items: int, dist: Dist) -> dict[str, list]:
    if dist.world == 1:
        return local
    rows = [[local[k][i] for k in local] for i in range(len(next(iter(local.values()))))]
    everyone = dist.gather([(dist.rank, rows)])
    keys = list(local)
    merged = [None] * n_items
    for rank, shard_rows in everyone:
        for j, row in enumerate(shard_rows):
            merged[rank + j * dist.world] = row
    return {k: [row[c] for row in merged] for c, k in enumerate(keys)}
