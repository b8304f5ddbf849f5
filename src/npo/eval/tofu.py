"""TOFU (Maini et al. 2024): per-item statistics in the official log format, and one full evaluation
of a model (the four eval sets, logs written in the official format, `summary.json`, `summary.md`).

Items are sharded across processes and gathered back in order, so N processes write the same
logs as one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from npo.data.batches import tokenize_qa
from npo.data.qa import QARecord, load_qa
from npo.data.templates import answer_prefix, render_prompt
from npo.errors import NpoError
from npo.eval.benchmarks import EVAL_BATCH
from npo.eval.logs import LOG_FILES, PROTOCOLS, apply_protocol, load_log_dir, parse_log, write_log_dir
from npo.eval.metrics import rouge_recalls, tofu_metrics
from npo.eval.scoring import Dist, gather_in_order, generate, prompt_ids, score_texts, shard

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


# TOFU's official evaluator (eval_everything.yaml, evaluate_util.py), which `--protocol legacy300`
# reproduces: texts cut at 200 tokens for scoring (a cut answer loses its EOS label); generation in
# batches of 30 in dataset order, left-padded, from the prompt tokenized alone, 200 tokens in total
# per batch, prompt included (so a batch's longest prompt decides how many tokens it generates).
OFFICIAL_MAX_LENGTH = 200
OFFICIAL_GENERATION_BATCH = 30
# TOFU's own prompt formats; npo's others (qa: a prompt ending in a space) keep the prompt's tokens as
# they stand in the training text, which tokenizing the prompt alone would change
OFFICIAL_TEMPLATES = ("llama2-tofu", "tofu-qa")


def item_log(set_name: str, records: list[QARecord], scores: dict, prompts: list[str],
             generations: list[str], references: list[str] | None = None) -> dict[str, list]:
    """The official per-item keys for one eval set (list variant). ROUGE compares each generation
    with `references` (default: the answers)."""
    keys = ("avg_gt_loss", "gt_loss", "num_token_gt", "avg_paraphrased_loss", "paraphrased_loss",
            "num_token_paraphrased", "average_perturb_loss", "perturb_loss", "num_token_perturb",
            "rouge1_recall", "rougeL_recall", "generated_text")
    logs: dict[str, list] = {k: [] for k in keys}
    references = references or [r.answer for r in records]
    r1, rl = rouge_recalls(generations, references)
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


def _official_reference(tok, template: str, rec: QARecord) -> str:
    """The answer as the official evaluator's ROUGE sees it: cut where its 200-token text is cut."""
    ex = tokenize_qa(tok, template, rec.question, rec.answer, OFFICIAL_MAX_LENGTH, where="eval item")
    if not ex.truncated:
        return rec.answer
    text = tok.decode(list(ex.input_ids[ex.n_prompt:]), skip_special_tokens=True)
    return text.removeprefix(answer_prefix(template)).strip()


def evaluate_sets(model, tok, template: str, sets: dict[str, list[QARecord]], *, max_length: int = 512,
                  max_new_tokens: int = 200, batch_size: int = EVAL_BATCH, dist: Dist | None = None,
                  official: bool = False, sample_seed: int | None = None) -> dict[str, dict]:
    """Per-item logs for each named set, gathered in the original item order across processes (each
    handles every `world`-th item, or under `official` every `world`-th generation batch).

    Default caps: texts up to `max_length` tokens, `max_new_tokens` generated per prompt, prompts
    batched by length. `official`: TOFU's evaluator exactly (see OFFICIAL_MAX_LENGTH above).
    `sample_seed`: sampled instead of greedy generation, seeded before every batch (the NPO authors'
    evaluator seeds 0)."""
    dist = dist or Dist()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if official:
        max_length = OFFICIAL_MAX_LENGTH
    block = OFFICIAL_GENERATION_BATCH if official else 1
    indices = {name: shard(len(recs), dist, block) for name, recs in sets.items()}
    shards = {name: [recs[i] for i in indices[name]] for name, recs in sets.items()}
    pairs = [(r.question, a) for name, recs in shards.items() for r in recs
             for a in {r.answer, base_answer(name, r), *r.perturbed_answer}]
    scores = score_texts(model, tok, template, pairs, max_length, batch_size, device, rank=dist.rank)
    prompts = {name: [render_prompt(template, r.question, tok) for r in recs] for name, recs in shards.items()}
    if official:  # the prompt tokenized alone, as TOFU's code does, for the formats it has
        ids = {name: ([tok(p)["input_ids"] for p in prompts[name]] if template in OFFICIAL_TEMPLATES
                      else prompt_ids(tok, template, recs, max_length)) for name, recs in shards.items()}
        gens = {name: generate(model, tok, ids[name], 0, block, device, dist.rank, max_length=OFFICIAL_MAX_LENGTH,
                               keep_order=True, sample_seed=sample_seed) for name in shards}
    else:
        ids = {name: prompt_ids(tok, template, recs, max_length) for name, recs in shards.items()}
        flat = generate(model, tok, [p for name in shards for p in ids[name]], max_new_tokens, batch_size, device,
                        dist.rank, sample_seed=sample_seed)
        gens, start = {}, 0
        for name, recs in shards.items():
            gens[name], start = flat[start:start + len(recs)], start + len(recs)
    out = {}
    for name, recs in shards.items():
        refs = [_official_reference(tok, template, r) for r in recs] if official else None
        local = item_log(name, recs, scores, prompts[name], gens[name], refs)
        out[name] = gather_in_order(local, indices[name], len(sets[name]), dist)
    model.train(was_training)
    return out


# TOFU publishes perturbed answers for forget01/05/10 only; the NPO paper evaluates forget20 and
# larger on forget10's (their first 300 items under legacy300), as TOFU proposes (App. E.1.1)
FORGET_PROXY = {f"forget{p}": "forget10_perturbed" for p in (20, 30, 50, 90)}


def forget_eval_split(forget_split: str) -> str:
    return FORGET_PROXY.get(forget_split, f"{forget_split}_perturbed")


def load_eval_sets(data: str, forget_split: str, protocol: str) -> dict[str, list[QARecord]]:
    """The four eval sets, cut to the protocol's item count (legacy300: the first 300 of each)."""
    if protocol not in PROTOCOLS:
        raise NpoError(f"unknown protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    keep = PROTOCOLS[protocol]
    sets = {}
    for name, split in EVAL_SPLITS.items():
        records = load_qa(data, forget_eval_split(forget_split) if name == "forget" else split)
        sets[name] = records[:keep] if keep else records
    return sets


def load_retain_logs(retain_logs_dir: str | None, protocol: str, n_forget: int | None = None) -> dict | None:
    """The retain model's forget log; refuses a count that differs from the evaluated forget set."""
    if not retain_logs_dir:
        return None
    retain = apply_protocol(load_log_dir(retain_logs_dir, sets=("forget",)), protocol)
    n = len(retain["forget"])
    if n_forget is not None and n != n_forget:
        hint = (" (the published logs hold 300 items: use --protocol legacy300)"
                if n == 300 and protocol != "legacy300" else "")
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
                   batch_size: int = EVAL_BATCH, max_length: int = 512, identity: dict | None = None,
                   dist: Dist | None = None, generation: str = "greedy") -> dict | None:
    """Evaluate, write the official logs + summary into `out` (main process), return the summary.
    `legacy300` also applies the official evaluator's caps and batching (OFFICIAL_MAX_LENGTH);
    `generation="sampled"` samples as the NPO authors' evaluator does."""
    dist = dist or Dist()
    sets = load_eval_sets(data, forget_split, protocol)
    retain = load_retain_logs(retain_logs, protocol, len(sets["forget"]))  # fail before the slow part
    if identity and "template_reason" in identity and dist.rank == 0:
        log.info("template %s (%s)", template, identity["template_reason"])
    official = protocol == "legacy300"
    raw = evaluate_sets(model, tok, template, sets, max_length=max_length, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, dist=dist, official=official,
                        sample_seed=0 if generation == "sampled" else None)
    if dist.rank != 0:
        return None
    logs = {name: parse_log(log, source=f"{out}/{LOG_FILES[name]}") for name, log in raw.items()}
    caps = (f"official: texts cut at {OFFICIAL_MAX_LENGTH} tokens, generation batches of {OFFICIAL_GENERATION_BATCH} "
            f"in dataset order, {OFFICIAL_MAX_LENGTH} tokens per batch in total" if official
            else f"texts up to {max_length} tokens, {max_new_tokens} new tokens per prompt")
    identity = {"data": str(data), "forget_split": forget_split, "forget_eval_split": forget_eval_split(forget_split),
                "template": template, "caps": caps, "generation": generation, **(identity or {})}
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
                          max_length=spec.max_length, identity=spec.identity, dist=dist,
                          generation=spec.generation)


def headline(summary: dict) -> str:
    fq = summary["forget_quality"]
    fq_text = f"{fq:.4g}" if fq is not None else f"n/a ({summary['forget_quality_reason']})"
    return f"Model Utility {summary['model_utility']:.4f}; Forget Quality {fq_text}"
