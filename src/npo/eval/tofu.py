"""TOFU (Maini et al. 2024): per-item statistics in the official log format, and one full evaluation
of a model (the four eval sets, logs written in the official format, `summary.json`, `summary.md`).

Items are sharded across processes and gathered back in order, so N processes write the same
logs as one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from npo.data.qa import QARecord, load_qa
from npo.data.templates import render_prompt
from npo.errors import NpoError
from npo.eval.logs import LOG_FILES, PROTOCOLS, apply_protocol, load_log_dir, parse_log, write_log_dir
from npo.eval.metrics import rouge_recalls, tofu_metrics
from npo.eval.scoring import Dist, gather_in_order, generate, prompt_ids, score_texts

log = logging.getLogger("npo")

# eval set (as in logs.LOG_FILES) -> its data split; the forget split is filled in per run
EVAL_SPLITS = {
    "retain": "retain_perturbed",
    "forget": "{forget}_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
}


def base_answer(set_name: str, rec: QARecord) -> str:
    """The answer the truth ratio compares against: the paraphrase on forget/retain, the answer itself
    on real authors and world facts (which have no paraphrase)."""
    if set_name in ("forget", "retain") and rec.paraphrased_answer:
        return rec.paraphrased_answer
    return rec.answer


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
        out[name] = gather_in_order(local, len(sets[name]), dist)
    model.train(was_training)
    return out


def load_eval_sets(data: str, forget_split: str, protocol: str) -> dict[str, list[QARecord]]:
    """The four eval sets, cut to the protocol's item count (legacy300: the first 300 of each)."""
    if protocol not in PROTOCOLS:
        raise NpoError(f"unknown protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    keep = PROTOCOLS[protocol]
    sets = {}
    for name, split in EVAL_SPLITS.items():
        records = load_qa(data, split.format(forget=forget_split))
        sets[name] = records[:keep] if keep else records
    return sets


def load_retain_logs(retain_logs_dir: str | None, protocol: str, n_forget: int | None = None) -> dict | None:
    """The retain model's forget log; refuses a count that differs from the evaluated forget set."""
    if not retain_logs_dir:
        return None
    retain = apply_protocol(load_log_dir(retain_logs_dir, sets=("forget",)), protocol)
    n = len(retain["forget"])
    if n_forget is not None and n != n_forget:
        hint = " (the published logs hold 300 items: use --protocol legacy300)" if n == 300 else ""
        raise NpoError(f"{retain_logs_dir}: the retain model's forget log has {n} items but the evaluated "
                       f"forget set has {n_forget} under protocol '{protocol}'{hint}")
    return retain


def summarize(logs: dict, retain: dict | None, protocol: str, identity: dict) -> dict:
    return {"protocol": protocol, **tofu_metrics(logs, retain), **identity}


def summary_markdown(summary: dict) -> str:
    fq = summary["forget_quality"]
    fq_text = f"{fq:.4g}" if fq is not None else f"n/a ({summary.get('forget_quality_reason')})"
    rows = ["| set | Probability | ROUGE-L recall | Truth Ratio |", "|---|---|---|---|"]
    for s in ("retain", "real_authors", "world_facts", "forget"):
        rows.append(f"| {s} | {summary[f'{s}_prob']:.4f} | {summary[f'{s}_rouge']:.4f} | "
                    f"{summary[f'{s}_truth_ratio']:.4f} |")
    items = ", ".join(f"{k} {v}" for k, v in summary["items"].items())
    return "\n".join([
        f"**Model Utility** {summary['model_utility']:.4f} · **Forget Quality** {fq_text} · "
        f"protocol `{summary['protocol']}` ({items})", "", *rows, ""])


def evaluate_model(model, tok, *, data: str, forget_split: str, template: str, out: Path,
                   protocol: str = "full", retain_logs: str | None = None, max_new_tokens: int = 200,
                   batch_size: int = 16, max_length: int = 512, identity: dict | None = None,
                   dist: Dist | None = None) -> dict | None:
    """Evaluate, write the official logs + summary into `out` (main process), return the summary."""
    dist = dist or Dist()
    sets = load_eval_sets(data, forget_split, protocol)
    retain = load_retain_logs(retain_logs, protocol, len(sets["forget"]))  # fail before the slow part
    raw = evaluate_sets(model, tok, template, sets, max_length=max_length, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, dist=dist)
    if dist.rank != 0:
        return None
    logs = {name: parse_log(log, source=f"{out}/{LOG_FILES[name]}") for name, log in raw.items()}
    identity = {"data": str(data), "forget_split": forget_split, "template": template, **(identity or {})}
    out.mkdir(parents=True, exist_ok=True)
    write_log_dir(logs, out)
    summary = summarize(logs, retain, protocol, {**identity, "retain_logs": retain_logs})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


# ----------------------------------------------------------------------------- the benchmark seam

CURVES = {"Forget Quality": ("forget_quality", "log"), "Model Utility": ("model_utility", "linear")}


def evaluate(model, tok, spec, out: Path, dist: Dist | None = None) -> dict | None:
    """`npo eval --benchmark tofu` and the training-time hook (see eval/benchmarks.py)."""
    if not spec.forget_split:
        raise NpoError("TOFU evaluation needs a forget split (--forget-split, or 'eval_forget_split')")
    return evaluate_model(model, tok, data=spec.data, forget_split=spec.forget_split, template=spec.template,
                          out=out, protocol=spec.protocol, retain_logs=spec.retain_logs,
                          max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
                          max_length=spec.max_length, identity=spec.identity, dist=dist)


def headline(summary: dict) -> str:
    fq = summary["forget_quality"]
    fq_text = f"{fq:.4g}" if fq is not None else f"n/a ({summary['forget_quality_reason']})"
    return f"Model Utility {summary['model_utility']:.4f}; Forget Quality {fq_text}"
