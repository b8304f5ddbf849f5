"""The model side of an audit: per-item numbers from each model, one model loaded at a time.

For each role (before, after, retain) it writes the TOFU eval logs (the request's items as the forget
set) and, on the forget and holdout items, the membership-inference scores and each probe's per-item
probability (or option share). Everything downstream (intervals, verdicts, `npo verify`) is computed
from these arrays without a model. Items a probe cannot be built for are NaN.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from npo.audit.settings import AuditSettings
from npo.data.qa import QARecord
from npo.modeling import load_for_scoring
from npo.probes import formats, mia
from npo.probes.robustness import item_metrics, quantized, split_for_relearning

log = logging.getLogger("npo")


@dataclass
class Context:
    settings: AuditSettings
    template: str
    device: torch.device
    eval_sets: dict[str, list[QARecord]]  # TOFU's four sets, forget = the request's items
    item_sets: dict[str, list[QARecord]]  # "forget", "holdout"


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def probabilities(model, tok, ctx: Context, pairs: list[tuple[str, str] | None]) -> np.ndarray:
    """Per pair: exp(log p(answer | question) / tokens); NaN where the pair is None."""
    from npo.eval.scoring import score_texts

    s = ctx.settings
    real = [p for p in pairs if p is not None]
    scores = score_texts(model, tok, ctx.template, real, s.max_length, s.batch_size, ctx.device,
                         desc="audit scoring") if real else {}
    return np.array([math.nan if p is None else math.exp(scores[p][0] / scores[p][1]) for p in pairs])


def _with_rouge(model, tok, ctx: Context, records: list[QARecord | None]) -> tuple[np.ndarray, np.ndarray]:
    """(probability, ROUGE-L recall of the greedy answer) per record; NaN where None."""
    s = ctx.settings
    idx = [i for i, r in enumerate(records) if r is not None]
    prob, rouge = np.full(len(records), np.nan), np.full(len(records), np.nan)
    if idx:
        m = item_metrics(model, tok, ctx.template, [records[i] for i in idx], max_length=s.max_length,
                         max_new_tokens=s.max_new_tokens, batch_size=s.batch_size)
        prob[idx], rouge[idx] = m["prob"], m["rouge_l"]
    return prob, rouge


def _paraphrased(records: list[QARecord]) -> list[QARecord | None]:
    import dataclasses

    return [dataclasses.replace(r, question=r.paraphrased_question) if r.paraphrased_question else None
            for r in records]


def probe_items(model, tok, ctx: Context, role: str) -> dict[str, dict[str, np.ndarray]]:
    """Every probe's per-item numbers for one loaded model, on the forget and the holdout items."""
    s = ctx.settings
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, recs in ctx.item_sets.items():
        d = out[name] = dict(mia.scores_for(model, tok, ctx.template, [(r.question, r.answer) for r in recs],
                                            s.max_length, s.batch_size, s.k))
        forget = name == "forget"
        if "paraphrase" in s.probes:
            para = _paraphrased(recs)
            if forget:
                d["paraphrase_prob"], d["paraphrase_rouge_l"] = _with_rouge(model, tok, ctx, para)
            else:
                d["paraphrase_prob"] = probabilities(model, tok, ctx, [r and (r.question, r.answer) for r in para])
        if "jailbreak" in s.probes:
            jb = [formats.jailbreak(r) for r in recs]
            if forget:
                d["jailbreak_prob"], d["jailbreak_rouge_l"] = _with_rouge(model, tok, ctx, jb)
            else:
                d["jailbreak_prob"] = probabilities(model, tok, ctx, [(r.question, r.answer) for r in jb])
        for kind in ("multiple_choice", "fill_blank"):
            if kind in s.probes:
                c = formats.choice_scores(model, tok, ctx.template, recs, kind, max_length=s.max_length,
                                          batch_size=s.batch_size, seed=s.seed)
                d[f"{kind}_share"], d[f"{kind}_top"] = c["share"], c["top"]
    if "quant" in s.probes and role in ("after", "retain"):
        for bits in s.quant_bits:
            with quantized(model, bits):
                for name, recs in ctx.item_sets.items():
                    if name == "forget" and role == "after":
                        p, r = _with_rouge(model, tok, ctx, list(recs))
                        out[name][f"q{bits}_prob"], out[name][f"q{bits}_rouge_l"] = p, r
                    else:
                        out[name][f"q{bits}_prob"] = probabilities(model, tok, ctx, [(x.question, x.answer) for x in recs])
    return out


def collect_model(path: str, role: str, ctx: Context) -> tuple[dict, dict]:
    """(raw TOFU logs of the four eval sets, probe arrays) of one model."""
    from npo.eval.tofu import evaluate_sets

    t0 = time.time()
    s = ctx.settings
    model, tok = load_for_scoring(path, ctx.device)
    logs = evaluate_sets(model, tok, ctx.template, ctx.eval_sets, max_length=s.max_length,
                         max_new_tokens=s.max_new_tokens, batch_size=s.batch_size)
    items = probe_items(model, tok, ctx, role)
    del model
    release()
    log.info("audit: %s model scored in %.0fs", role, time.time() - t0)
    return logs, items


def merged_copy(adapter_dir: str, base_dir: str, out: Path) -> str:
    """A LoRA adapter merged into its base, saved as a plain model (relearning fine-tunes all weights)."""
    from peft import PeftModel

    from npo.modeling import load_model, load_tokenizer, match_vocab

    tok = load_tokenizer(adapter_dir)
    base = load_model(base_dir, torch.float32)
    match_vocab(base, tok)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def relearn_items(paths: dict[str, str], adapter_bases: dict[str, str | None], ctx: Context) -> tuple[dict, dict]:
    """Fine-tune `after` (and `retain`, the control) on a seeded part of the forget items; per role the
    probability of the other part (NaN on the relearnt part) and of the holdout items afterwards."""
    from npo.probes.run import relearn

    s = ctx.settings
    forget, holdout = ctx.item_sets["forget"], ctx.item_sets["holdout"]
    learn, held = split_for_relearning(len(forget), s.relearn_fraction, s.seed)
    held_set = set(held)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="npo-audit-relearn-") as tmp:  # holds forget text: never kept
        for role in ("after", "retain"):
            if not paths.get(role):
                continue
            src = paths[role]
            if adapter_bases.get(role):
                src = merged_copy(src, adapter_bases[role], Path(tmp) / f"{role}_merged")
            relearned = relearn(src, [forget[i] for i in learn], Path(tmp), f"{role}_relearned",
                                epochs=s.relearn_epochs, lr=s.relearn_lr, batch_size=s.relearn_batch_size,
                                template=ctx.template, max_length=s.max_length, seed=s.seed,
                                overrides=s.relearn_overrides, keep=False)
            model, tok = load_for_scoring(str(relearned), ctx.device)
            held_recs = [forget[i] if i in held_set else None for i in range(len(forget))]
            if role == "after":
                prob, rouge = _with_rouge(model, tok, ctx, held_recs)
                out[role] = {"forget": {"relearned_prob": prob, "relearned_rouge_l": rouge}}
            else:
                out[role] = {"forget": {"relearned_prob": probabilities(
                    model, tok, ctx, [r and (r.question, r.answer) for r in held_recs])}}
            out[role]["holdout"] = {"relearned_prob": probabilities(model, tok, ctx,
                                                                    [(r.question, r.answer) for r in holdout])}
            del model
            release()
            shutil.rmtree(relearned, ignore_errors=True)
    return out, {"learn": learn, "held": held}
