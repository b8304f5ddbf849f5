"""`run_probes`: every probe on one unlearned model, written to `probes.json` and `probes.md`.

Models are loaded one at a time (reference, retain, unlearned, then the relearned copies), so a 7B
run holds a single model on the accelerator.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from npo.data.qa import QARecord, load_qa
from npo.errors import NpoError
from npo.modeling import check_model_path, load_for_scoring
from npo.probes import mia
from npo.probes.robustness import (
    item_metrics,
    quantizable,
    quantized,
    recovered,
    split_for_relearning,
    summarise,
)

log = logging.getLogger("npo")

PROBES = ("mia", "relearn", "quant", "paraphrase")
ROLES = {"model": "unlearned", "reference": "reference (before unlearning)",
         "retain": "retain (never saw the forget set)"}


@dataclass
class _Setup:
    template: str
    max_length: int
    max_new_tokens: int
    batch_size: int
    k: float
    device: torch.device

    def metrics(self, model, tok, records, paraphrased=False):
        return item_metrics(model, tok, self.template, records, max_length=self.max_length,
                            max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, paraphrased=paraphrased)

    def mia_scores(self, model, tok, records):
        return mia.scores_for(model, tok, self.template, [(r.question, r.answer) for r in records],
                              self.max_length, self.batch_size, self.k)


def check_probes(probes) -> tuple[str, ...]:
    names = tuple(p.strip() for p in (probes.split(",") if isinstance(probes, str) else probes) if p.strip())
    unknown = [p for p in names if p not in PROBES]
    if unknown or not names:
        raise NpoError(f"unknown probe(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PROBES)}")
    return names


def forget_records(data: str, forget_split: str) -> list[QARecord]:
    """The forget set; paraphrased questions come from `<split>_perturbed` (TOFU keeps them there)
    when the split itself has none."""
    records = load_qa(data, forget_split)
    perturbed = Path(data) / f"{forget_split}_perturbed.json"
    if not any(r.paraphrased_question for r in records) and perturbed.is_file():
        para = {(r.question, r.answer): r.paraphrased_question for r in load_qa(perturbed)}
        records = [QARecord(r.question, r.answer, r.paraphrased_answer, para.get((r.question, r.answer)),
                            r.perturbed_answer) for r in records]
    return records


def holdout_records(data: str, holdout: str | None) -> tuple[str, list[QARecord]]:
    """(source, records) of the non-members: a file, a split name in `data`, or (when not given) the
    one `holdout*.json` in `data`."""
    if holdout:
        return (holdout, load_qa(holdout)) if Path(holdout).is_file() else (f"{data}/{holdout}", load_qa(data, holdout))
    found = sorted(Path(data).glob("holdout*.json")) if Path(data).is_dir() else []
    if len(found) != 1:
        why = "none found" if not found else f"several found: {', '.join(p.name for p in found)}"
        raise NpoError(f"the mia probe needs non-members: pass --holdout FILE_OR_SPLIT (answers no model saw, "
                       f"from the same distribution as the forget set); holdout*.json in {data}: {why}")
    return str(found[0]), load_qa(found[0])


def _title(model_dir: str) -> str:
    """`runs/npo_rt/model` -> `npo_rt`; anything else -> its last component."""
    p = Path(model_dir)
    return p.parent.name if p.name == "model" and p.parent.name else p.name


def _release() -> None:
    """Return the memory of models the caller has just dropped (`del model`) to the accelerator."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _probe_one(path: str, role: str, setup: _Setup, probes, forget, holdout, para_idx, quant_bits) -> dict:
    """Everything one loaded model is needed for."""
    t0 = time.time()
    model, tok = load_for_scoring(path, setup.device)
    out = {"forget": setup.metrics(model, tok, forget)}
    if "mia" in probes:
        out["members"] = setup.mia_scores(model, tok, forget)
        out["nonmembers"] = setup.mia_scores(model, tok, holdout)
    if "paraphrase" in probes and role != "retain" and para_idx:
        out["paraphrase"] = setup.metrics(model, tok, [forget[i] for i in para_idx], paraphrased=True)
    if "quant" in probes and role == "model":
        out["n_quantized"] = len(quantizable(model))
        out["quant"] = {}
        for bits in quant_bits:
            with quantized(model, bits):
                out["quant"][bits] = setup.metrics(model, tok, forget)
    del model
    _release()
    log.info("probes of the %s model done in %.0fs", ROLES.get(role, role), time.time() - t0)
    return out


def relearn(model_dir: str, records: list[QARecord], out: Path, name: str, *, epochs: int, lr: float,
             batch_size: int, template: str, max_length: int, seed: int, overrides: dict, keep: bool) -> Path:
    """Fine-tune a copy of `model_dir` on `records` (plain NLL, fixed seed); returns its model dir."""
    import npo
    from npo.config import build

    out.mkdir(parents=True, exist_ok=True)
    train = out / "relearn_set.json"
    train.write_text("".join(json.dumps({"question": r.question, "answer": r.answer}) + "\n" for r in records),
                     encoding="utf-8")
    cfg = build(None, {"model": model_dir, "train": [str(train)], "out": str(out / name), "epochs": epochs,
                       "lr": lr, "batch_size": batch_size, "template": template, "max_length": max_length,
                       "seed": seed, "overwrite": True, "warmup_epochs": 0.0, **overrides})
    run_dir = npo.finetune(cfg)
    if not keep:  # optimizer state and a full copy of the weights: large for real models
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return run_dir / "model"


def _finite(x):
    """NaN/inf -> None, recursively, so probes.json stays valid JSON."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


def run_probes(model_dir, reference_dir, data, forget_split: str, out, *, retain_model_dir=None, holdout=None,
               probes=PROBES, template: str | None = "qa", max_length: int = 512, max_new_tokens: int = 200,
               batch_size: int = 16, k: float = 0.2, relearn_fraction: float = 0.5, relearn_epochs: int = 2,
               relearn_lr: float = 1e-5, relearn_batch_size: int = 8, relearn_overrides: dict | None = None,
               keep_relearned: bool = False, quant_bits=(8, 4), seed: int = 0, title: str | None = None) -> dict:
    """Run the probes on `model_dir` (unlearned) against `reference_dir` (before unlearning) and, when
    given, `retain_model_dir` (trained without the forget set); writes out/probes.json and
    out/probes.md and returns the JSON dict. `template=None`: the model tokenizer's default."""
    t0 = time.time()
    probes = check_probes(probes)
    if not 0 < k <= 1:
        raise NpoError(f"k must be in (0, 1], got {k}")
    if any(not isinstance(b, int) or not 2 <= b <= 16 for b in quant_bits) or not quant_bits:
        raise NpoError(f"quant bits must be integers from 2 to 16, got {list(quant_bits)}")
    if not 0 < relearn_fraction < 1:
        raise NpoError(f"relearn fraction must be between 0 and 1, got {relearn_fraction}")
    data, out = str(data), Path(out)
    forget = forget_records(data, forget_split)
    holdout_path, holdout_recs = holdout_records(data, holdout) if "mia" in probes else (None, [])
    if "relearn" in probes and len(forget) < 2:
        raise NpoError(f"relearning needs at least 2 forget items, got {len(forget)}")
    para_idx = [i for i, r in enumerate(forget) if r.paraphrased_question]
    paths = {"reference": str(reference_dir), "retain": retain_model_dir and str(retain_model_dir),
             "model": str(model_dir)}
    for p in filter(None, paths.values()):
        check_model_path(p)
    if template is None:
        from npo.data.templates import default_template
        from npo.modeling import load_tokenizer

        template = default_template(load_tokenizer(paths["model"]))
    setup = _Setup(template, max_length, max_new_tokens, batch_size, k,
                   torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    out.mkdir(parents=True, exist_ok=True)
    raw = {role: _probe_one(p, role, setup, probes, forget, holdout_recs, para_idx, quant_bits)
           for role, p in paths.items() if p}
    result = {"model": paths["model"], "reference": paths["reference"], "retain_model": paths["retain"],
              "data": data, "forget_split": forget_split, "template": template, "seed": seed,
              "probes": list(probes), "title": title or _title(paths["model"]),
              "forget": {role: summarise(r["forget"]) for role, r in raw.items()}}

    if "mia" in probes:
        auc = {role: mia.aucs(r["members"], r["nonmembers"]) for role, r in raw.items()}
        result["mia"] = {"holdout": holdout_path, "n_members": len(forget), "n_nonmembers": len(holdout_recs),
                         "k": k, "auc": auc,
                         "privleak": ({a: mia.privleak(auc["model"][a], auc["retain"][a]) for a in mia.ATTACKS}
                                      if "retain" in auc else None)}

    if "relearn" in probes:
        learn, held = split_for_relearning(len(forget), relearn_fraction, seed)
        kw = dict(epochs=relearn_epochs, lr=relearn_lr, batch_size=relearn_batch_size, template=template,
                  max_length=max_length, seed=seed, overrides=relearn_overrides or {}, keep=keep_relearned)
        held_recs = [forget[i] for i in held]
        rel = {"fraction": relearn_fraction, "epochs": relearn_epochs, "lr": relearn_lr,
               "batch_size": relearn_batch_size, "n_relearn": len(learn), "n_heldout": len(held),
               "overrides": relearn_overrides or {}}
        for role in ("model", "retain") if paths["retain"] else ("model",):
            relearned = relearn(paths[role], [forget[i] for i in learn], out / "relearn", f"{role}_relearned", **kw)
            m, tok = load_for_scoring(str(relearned), setup.device)
            after = summarise(setup.metrics(m, tok, held_recs))
            del m
            _release()
            if not keep_relearned:
                shutil.rmtree(relearned, ignore_errors=True)
            rel[role] = {"before": summarise(raw[role]["forget"], held), "after": after}
        rel["reference"] = summarise(raw["reference"]["forget"], held)
        rel["recovered"] = {m: recovered(rel["model"]["before"][m], rel["model"]["after"][m], rel["reference"][m])
                            for m in ("prob", "rouge_l")}
        result["relearn"] = rel

    if "quant" in probes:
        base = result["forget"]["model"]
        q = {"layers": "every nn.Linear except the LM head (kept in full precision)",
             "scheme": "symmetric round-to-nearest, one scale per output channel",
             "n_layers": raw["model"]["n_quantized"], "unquantized": base}
        for bits, items in raw["model"]["quant"].items():
            s = summarise(items)
            q[f"int{bits}"] = {**s, "delta_prob": s["prob"] - base["prob"], "delta_rouge_l": s["rouge_l"] - base["rouge_l"]}
        result["quant"] = q

    if "paraphrase" in probes:
        para = {"n": len(para_idx), "skipped": len(forget) - len(para_idx)}
        for role in ("model", "reference"):
            if para_idx:
                para[role] = {"question": summarise(raw[role]["forget"], para_idx),
                              "paraphrased": summarise(raw[role]["paraphrase"])}
        result["paraphrase"] = para

    return write_result(out, result, markdown, t0)


def write_result(out: Path, result: dict, to_markdown, t0: float) -> dict:
    """probes.json (non-finite numbers as null) and probes.md of a probe run; returns the result."""
    result["elapsed_s"] = round(time.time() - t0, 1)
    result = _finite(result)
    (out / "probes.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "probes.md").write_text(to_markdown(result), encoding="utf-8")
    return result


def _f(x, fmt=".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def models_line(r: dict) -> str:
    """The models a probe result compares, for the start of its Markdown section."""
    return (f"Unlearned model `{r['model']}`, reference `{r['reference']}`"
            + (f", retain model `{r['retain_model']}`" if r["retain_model"] else ""))


def markdown(r: dict) -> str:
    """The probes as a Markdown section (tables and one line on how to read each)."""
    lines = [f"## Probes: {r['title']}", "",
             models_line(r) + f"; forget set `{r['forget_split']}`. See docs/probes.md for how to read these numbers.", "",
             "| forget set | probability | ROUGE-L |", "|---|---|---|"]
    lines += [f"| {ROLES[role]} | {_f(m['prob'])} | {_f(m['rouge_l'])} |" for role, m in r["forget"].items()]
    if "mia" in r:
        m, pct = r["mia"], f"{r['mia']['k'] * 100:g}"
        lines += ["", f"### Membership inference (AUC, forget {m['n_members']} vs holdout {m['n_nonmembers']})", "",
                  "0.5: forget answers look like never-seen ones; higher: the model still recognises them.", "",
                  f"| model | LOSS | zlib | Min-{pct}% | Min-{pct}%++ |", "|---|---|---|---|---|"]
        lines += [f"| {ROLES[role]} | " + " | ".join(_f(a[x]) for x in mia.ATTACKS) + " |"
                  for role, a in m["auc"].items()]
        if m["privleak"]:
            lines.append("| PrivLeak vs retain (%) | " + " | ".join(_f(m["privleak"][x], ".1f") for x in mia.ATTACKS)
                         + " |")
    if "relearn" in r:
        rl = r["relearn"]
        lines += ["", f"### Relearning ({rl['epochs']} epochs at lr {rl['lr']:g} on {rl['n_relearn']} forget items; "
                  f"measured on the {rl['n_heldout']} held back)", "",
                  "| | probability | ROUGE-L |", "|---|---|---|",
                  f"| unlearned, before | {_f(rl['model']['before']['prob'])} | {_f(rl['model']['before']['rouge_l'])} |",
                  f"| unlearned, after relearning | {_f(rl['model']['after']['prob'])} "
                  f"| {_f(rl['model']['after']['rouge_l'])} |",
                  f"| reference | {_f(rl['reference']['prob'])} | {_f(rl['reference']['rouge_l'])} |",
                  f"| fraction recovered | {_f(rl['recovered']['prob'], '.2f')} | {_f(rl['recovered']['rouge_l'], '.2f')} |"]
        if "retain" in rl:
            lines += [f"| control: retain model, before | {_f(rl['retain']['before']['prob'])} "
                      f"| {_f(rl['retain']['before']['rouge_l'])} |",
                      f"| control: retain model, after relearning | {_f(rl['retain']['after']['prob'])} "
                      f"| {_f(rl['retain']['after']['rouge_l'])} |"]
    if "quant" in r:
        q = r["quant"]
        lines += ["", f"### Quantization ({q['scheme']}; {q['layers']})", "",
                  "| weights | probability | Δ | ROUGE-L | Δ |", "|---|---|---|---|---|",
                  f"| unquantized | {_f(q['unquantized']['prob'])} | | {_f(q['unquantized']['rouge_l'])} | |"]
        lines += [f"| {name} | {_f(v['prob'])} | {_f(v['delta_prob'], '+.3f')} | {_f(v['rouge_l'])} "
                  f"| {_f(v['delta_rouge_l'], '+.3f')} |" for name, v in q.items() if name.startswith("int")]
    if "paraphrase" in r:
        p = r["paraphrase"]
        lines += ["", f"### Paraphrased questions ({p['n']} items; {p['skipped']} without a paraphrase skipped)", ""]
        if p["n"]:
            lines += ["| model | probability (original) | probability (paraphrased) | ROUGE-L (original) "
                      "| ROUGE-L (paraphrased) |", "|---|---|---|---|---|"]
            lines += [f"| {ROLES[role]} | {_f(p[role]['question']['prob'])} | {_f(p[role]['paraphrased']['prob'])} "
                      f"| {_f(p[role]['question']['rouge_l'])} | {_f(p[role]['paraphrased']['rouge_l'])} |"
                      for role in ("model", "reference")]
    return "\n".join(lines) + "\n"
