"""MUSE (Shi et al., ICLR 2025): the benchmark's criteria computed as muse_bench computes them, per-item
logs in its layout, `summary.json` and `summary.md`.

- VerbMem on D_forget: greedy continuation of each `verbmem` prompt (tokenised with BOS), 128 new
  tokens, ROUGE-L F1 against the ground truth cut to its first 128 tokens (BOS counted, as MUSE
  cuts the BOS-prefixed ids), both decoded without special tokens;
- KnowMem on D_forget and D_retain: the ICL prompt (eval/muse_metrics.py), greedy, 32 new tokens,
  the answer cut at the stop words, ROUGE-L F1 against the answer; utility = KnowMem on D_retain;
- PrivLeak: Min-40% of every `privleak` text (with BOS, untruncated), the forget-vs-holdout AUC,
  and its relative gap to a retrained model's AUC: MUSE's fixed News/Books values, or a retain
  model's own (`retain_logs`: its `npo eval --benchmark muse` folder).
Values are x100 (PrivLeak is already a percentage), each ROUGE mean with a bootstrap 95% interval.
`max_new_tokens` caps both lengths (the default 200 leaves MUSE's 128 and 32). Items are sharded
across processes and gathered back in order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from npo.data.muse import KNOWMEM, PRIVLEAK, MuseData
from npo.errors import NpoError
from npo.eval import muse_metrics as mm
from npo.eval.scoring import Dist, gather_in_order, generate, shard, text_token_logprobs
from npo.probes.mia import privleak as privleak_pct

log = logging.getLogger("npo")

VERBMEM_NEW_TOKENS, KNOWMEM_NEW_TOKENS = 128, 32  # muse_bench eval.py defaults
CRITERIA = {  # summary key -> (label, log folder)
    "verbmem_f": ("VerbMem on D_forget", "verbmem_f"),
    "knowmem_f": ("KnowMem on D_forget", "knowmem_f"),
    "knowmem_r": ("KnowMem on D_retain (utility)", "knowmem_r"),
}
AUC_PAIRS = (("forget", "holdout"), ("forget", "retain"), ("retain", "holdout"))
PRIVLEAK_KEY = f"forget_holdout_Min-{round(mm.MIN_K * 100)}%"
HUB_CORPORA = {"hf:muse-bench/MUSE-News": "news", "hf:muse-bench/MUSE-Books": "books"}


def encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=True, verbose=False)["input_ids"])


def decode(tok, ids) -> str:
    """As muse_bench decodes: special tokens skipped, tokenization spaces cleaned up."""
    return mm.clean_up_spaces(tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def cut_ground_truth(tok, gt: str, n_tokens: int) -> str:
    return decode(tok, encode(tok, gt)[:n_tokens])


def _check_context(model, encoded: list[list[int]], new_tokens: int, source: str, field: str) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    for i, ids in enumerate(encoded, start=1):
        if limit and len(ids) + new_tokens > limit:
            raise NpoError(f"{source}, item {i}, field '{field}': {len(ids)} tokens plus {new_tokens} new ones "
                           f"exceed the model's {limit} positions")


def reference_auc(retain_logs: str | None, data: str) -> tuple[float | None, str]:
    """The retrained model's forget-vs-holdout AUC and where it comes from: `news` / `books` (MUSE's
    fixed values), a retain model's MUSE eval folder, or the corpus of `hf:muse-bench/MUSE-*`."""
    name = retain_logs or HUB_CORPORA.get(str(data).rstrip("/"))
    if name in mm.RETRAIN_AUC:
        return mm.RETRAIN_AUC[name], f"MUSE's fixed retrained-model AUC ({name})"
    if not name:
        return None, ("no retrained-model AUC: pass retain_logs ('news', 'books', or a retain model's "
                      "`npo eval --benchmark muse` folder)")
    path = Path(name)
    path = path / "summary.json" if path.is_dir() else path
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise NpoError(f"{path}: cannot read a MUSE summary ({err}); retain_logs must be 'news', 'books' or "
                       "a retain model's `npo eval --benchmark muse` folder") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("privleak_auc"), int | float):
        raise NpoError(f"{path}: no 'privleak_auc' number (not a MUSE summary)")
    return float(summary["privleak_auc"]), f"retain model ({path})"


def _rouge_log(rows: list[dict], targets: list[str], responses: list[str]) -> list[dict]:
    return [{**row, **scores} for row, scores in zip(rows, mm.rouge_scores(targets, responses), strict=True)]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _model_outputs(model, tok, ids: dict, text_ids: dict, new_tokens: tuple[int, int], batch_size: int,
                   dist: Dist) -> tuple[dict, dict]:
    """Every generation (VerbMem, then both KnowMem sides in one pass) and every privleak text's
    scores; each process handles every `world`-th item, gathered back in item order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    indices = {key: shard(len(enc), dist) for key, enc in {**ids, **text_ids}.items()}
    mine = {key: [enc[i] for i in indices[key]] for key, enc in {**ids, **text_ids}.items()}
    gens = {"verbmem_f": generate(model, tok, mine["verbmem_f"], new_tokens[0], batch_size, device, dist.rank,
                                  raw=True)}
    know_keys = [k for k in ids if k != "verbmem_f"]
    flat = generate(model, tok, [x for k in know_keys for x in mine[k]], new_tokens[1], batch_size, device,
                    dist.rank, raw=True)
    for k in know_keys:
        gens[k], flat = flat[:len(mine[k])], flat[len(mine[k]):]
    gens = {k: [mm.clean_up_spaces(g) for g in v] for k, v in gens.items()}
    logps = text_token_logprobs(model, [x for s in text_ids for x in mine[s]], tok.pad_token_id, batch_size, device)
    scores = {}
    for s in text_ids:
        scores[s] = [{"n_tokens": int(lp.size), "loss": float(-np.mean(lp)), **mm.min_k_scores(lp)}
                     for lp in logps[:len(mine[s])]]
        logps = logps[len(mine[s]):]
    model.train(was_training)
    gens = {k: gather_in_order({"g": g}, indices[k], len(ids[k]), dist)["g"] for k, g in gens.items()}
    scores = {s: gather_in_order({"s": v}, indices[s], len(text_ids[s]), dist)["s"] for s, v in scores.items()}
    return gens, scores


def evaluate(model, tok, spec, out: Path, dist: Dist | None = None) -> dict | None:
    """`npo eval --benchmark muse` and the training-time hook (see eval/benchmarks.py)."""
    dist = dist or Dist()
    data = MuseData(spec.data)
    verbmem = data.verbmem()
    knowmem = {side: data.knowmem(side) for side in KNOWMEM}
    texts = {s: data.privleak(s) for s in PRIVLEAK if s != "retain" or data.has_privleak(s)}
    ref_auc, ref_source = reference_auc(spec.retain_logs, spec.data)  # every input checked before the slow part
    n_verb, n_know = min(VERBMEM_NEW_TOKENS, spec.max_new_tokens), min(KNOWMEM_NEW_TOKENS, spec.max_new_tokens)
    prompts = {"verbmem_f": [p for p, _ in verbmem]}
    for side, (qa, icl) in knowmem.items():
        prefix = mm.icl_prefix(icl)
        prompts[f"knowmem_{side[0]}"] = [mm.knowmem_prompt(prefix, q) for q, _ in qa]
    ids = {key: [encode(tok, p) for p in ps] for key, ps in prompts.items()}
    text_ids = {s: [encode(tok, t) for t in ts] for s, ts in texts.items()}
    _check_context(model, ids["verbmem_f"], n_verb, data.source("verbmem", "forget"), "prompt")
    for side in KNOWMEM:
        _check_context(model, ids[f"knowmem_{side[0]}"], n_know, data.source("knowmem", KNOWMEM[side][0]), "question")
    for s, enc in text_ids.items():
        _check_context(model, enc, 0, data.source("privleak", s), "text")

    gens, scores = _model_outputs(model, tok, ids, text_ids, (n_verb, n_know), spec.batch_size, dist)
    if dist.rank != 0:
        return None

    gts = [cut_ground_truth(tok, gt, n_verb) for _, gt in verbmem]
    logs = {"verbmem_f": _rouge_log([{"prompt": p, "gt": gt, "response": r} for (p, _), gt, r
                                     in zip(verbmem, gts, gens["verbmem_f"], strict=True)], gts, gens["verbmem_f"])}
    for side, (qa, _) in knowmem.items():
        key = f"knowmem_{side[0]}"
        answers = [mm.cut_answer(g) for g in gens[key]]
        logs[key] = _rouge_log([{"question": q, "prompt": p, "gt": a, "response": r, "generation": g}
                                for (q, a), p, r, g in zip(qa, prompts[key], answers, gens[key], strict=True)],
                               [a for _, a in qa], answers)
    privleak_log = {s: [{"text": t, **sc} for t, sc in zip(texts[s], scores[s], strict=True)] for s in texts}
    keys = ["loss", *(f"Min-{round(r * 100)}%" for r in mm.MIN_K_RATIOS)]
    aucs = {f"{a}_{b}_{k}": mm.split_auc([x[k] for x in scores[a]], [x[k] for x in scores[b]])
            for a, b in AUC_PAIRS if a in scores and b in scores for k in keys}

    summary: dict = {"benchmark": "muse"}
    aggs = {}
    for key in CRITERIA:
        aggs[key] = mm.aggregate(logs[key])
        summary[key] = 100 * aggs[key]["mean_rougeL"]
        summary[f"{key}_ci"] = [100 * aggs[key]["rougeL_ci_lo"], 100 * aggs[key]["rougeL_ci_hi"]]
    summary["utility"] = summary["knowmem_r"]
    auc = aucs[PRIVLEAK_KEY]
    summary.update({"privleak": None if ref_auc is None else privleak_pct(auc, ref_auc), "privleak_auc": auc,
                    "privleak_auc_retrain": ref_auc, "privleak_reference": ref_source})
    summary.update({
        "items": {**{k: len(ids[k]) for k in CRITERIA}, **{f"privleak_{s}": len(t) for s, t in texts.items()}},
        "max_new_tokens": {"verbmem": n_verb, "knowmem": n_know}, "min_k": mm.MIN_K,
        "bootstrap": {"resamples": mm.N_RESAMPLES, "confidence": mm.CONFIDENCE, "seed": 0},
        "data": str(spec.data), **spec.identity})
    out = Path(out)
    for key, (_, folder) in CRITERIA.items():
        _write(out / folder / "log.json", logs[key])
        _write(out / folder / "agg.json", aggs[key])
    _write(out / "privleak" / "log.json", privleak_log)
    _write(out / "privleak" / "auc.json", aucs)
    _write(out / "summary.json", summary)
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------- the benchmark seam

CURVES = {"KnowMem_f": ("knowmem_f", "linear"), "Utility (KnowMem_r)": ("knowmem_r", "linear"),
          "VerbMem_f": ("verbmem_f", "linear"), "PrivLeak (%)": ("privleak", "linear")}


def _privleak_text(summary: dict) -> str:
    if summary["privleak"] is None:
        return f"n/a (AUC {summary['privleak_auc']:.4f}; no retrained-model AUC)"
    return f"{summary['privleak']:.2f}"


def headline(summary: dict) -> str:
    return (f"VerbMem_f {summary['verbmem_f']:.2f}; KnowMem_f {summary['knowmem_f']:.2f}; "
            f"KnowMem_r (utility) {summary['knowmem_r']:.2f}; PrivLeak {_privleak_text(summary)}")


def summary_markdown(summary: dict) -> str:
    items = summary["items"]
    rows = ["| criterion | value | 95% CI | items |", "|---|---:|---|---:|"]
    for key, (label, _) in CRITERIA.items():
        lo, hi = summary[f"{key}_ci"]
        rows.append(f"| {label} (ROUGE-L F1 x100) | {summary[key]:.2f} | [{lo:.2f}, {hi:.2f}] | {items[key]} |")
    rows.append(f"| PrivLeak (%) | {_privleak_text(summary)} | n/a | {items['privleak_forget']} forget / "
                f"{items['privleak_holdout']} holdout |")
    ref = (f"against {summary['privleak_auc_retrain']:.4f}, {summary['privleak_reference']}"
           if summary["privleak_auc_retrain"] is not None else f"({summary['privleak_reference']})")
    n = summary["max_new_tokens"]
    return "\n".join([
        f"**MUSE** · {headline(summary)}", "", *rows, "",
        f"PrivLeak: Min-{round(summary['min_k'] * 100)}% AUC of forget vs holdout {summary['privleak_auc']:.4f} {ref}. "
        f"Generation: greedy, {n['verbmem']} new tokens (VerbMem), {n['knowmem']} (KnowMem). Intervals: "
        f"percentile bootstrap of the mean, {summary['bootstrap']['resamples']} resamples.", ""])
