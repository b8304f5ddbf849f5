"""The relearning and quantization probes on multiple-choice accuracy (`npo probe --mcq TASK`): does
hazardous knowledge that an unlearned model no longer shows on WMDP-style questions come back after
a little fine-tuning (Łucki et al. 2024, "An adversarial perspective on machine unlearning for AI
safety") or under weight quantization (Zhang et al. 2024)?

- relearn: a seeded share of the task's questions becomes a fine-tuning set (the lm-eval prompt,
  then the correct letter and choice, e.g. " B. 4"); accuracy is measured on the held-back questions
  before and after, against the reference model's on the same questions;
- quant: accuracy on every question with the linear layers quantized (probes/robustness.py).

Accuracy is `npo eval --benchmark mcq`'s (eval/mcq.py), at the model's context length as lm-eval.
Writes probes.json and probes.md; models are loaded one at a time.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from npo.data.mcq import LETTERS, MCQ, load_mcq
from npo.data.qa import QARecord
from npo.errors import NpoError
from npo.eval.mcq import accuracy, convention, default_max_length, prompt, score
from npo.modeling import check_model_path, load_for_scoring
from npo.probes.robustness import quantizable, quantized, recovered, split_for_relearning
from npo.probes.run import ROLES, _f, _release, _title, models_line, relearn, write_result

log = logging.getLogger("npo")

PROBES = ("relearn", "quant")


def check_probes(probes) -> tuple[str, ...]:
    names = tuple(p.strip() for p in (probes.split(",") if isinstance(probes, str) else probes) if p.strip())
    unknown = [p for p in names if p not in PROBES]
    if unknown or not names:
        raise NpoError(f"with --mcq the probes are {', '.join(PROBES)}; got {', '.join(unknown) or '(none)'}")
    return names


def relearn_records(questions: list[MCQ], conv) -> list[QARecord]:
    """Fine-tuning pairs for the `raw` template (prompt + " " + answer): the lm-eval prompt, then the
    correct letter and its choice."""
    return [QARecord(prompt(q, conv), f"{LETTERS[q.answer]}. {q.choices[q.answer]}") for q in questions]


def _correct(questions: list[MCQ], lls: list[list[float]]) -> np.ndarray:
    return np.array([int(np.argmax(ll)) == q.answer for q, ll in zip(questions, lls, strict=True)])


def _acc(correct: np.ndarray, idx=None) -> dict:
    sel = correct if idx is None else correct[np.asarray(idx, dtype=int)]
    return {"accuracy": float(sel.mean()), "n": int(sel.size)}


def _probe_one(path: str, role: str, questions, conv, probes, quant_bits, batch_size, device) -> dict:
    t0 = time.time()
    model, tok = load_for_scoring(path, device)
    limit = default_max_length(model, tok)
    lls, _ = score(model, tok, questions, conv, max_length=limit, batch_size=batch_size)
    out = {"correct": _correct(questions, lls), "subjects": accuracy(questions, lls)["subjects"]}
    if "quant" in probes and role == "model":
        out["n_quantized"] = len(quantizable(model))
        out["quant"] = {}
        for bits in quant_bits:
            with quantized(model, bits):
                out["quant"][bits] = _correct(questions, score(model, tok, questions, conv, max_length=limit,
                                                               batch_size=batch_size)[0])
    del model
    _release()
    log.info("mcq probes: %s model done in %.0fs", role, time.time() - t0)
    return out


def run_mcq_probes(model_dir, reference_dir, task: str, out, *, retain_model_dir=None, probes=PROBES,
                   mcq_convention: str = "current", limit: int | None = None, max_length: int = 512,
                   batch_size: int = 16, relearn_fraction: float = 0.5, relearn_epochs: int = 2,
                   relearn_lr: float = 1e-5, relearn_batch_size: int = 8, relearn_overrides: dict | None = None,
                   keep_relearned: bool = False, quant_bits=(8, 4), seed: int = 0, title: str | None = None) -> dict:
    """Relearning and quantization probes on the accuracy of `task` (any `npo eval --benchmark mcq`
    data); `max_length` bounds the relearning fine-tune's examples. Returns the probes.json dict."""
    t0 = time.time()
    probes = check_probes(probes)
    conv = convention(mcq_convention)
    if any(not isinstance(b, int) or not 2 <= b <= 16 for b in quant_bits) or not quant_bits:
        raise NpoError(f"quant bits must be integers from 2 to 16, got {list(quant_bits)}")
    if not 0 < relearn_fraction < 1:
        raise NpoError(f"relearn fraction must be between 0 and 1, got {relearn_fraction}")
    questions = load_mcq(task, limit)
    if "relearn" in probes and len(questions) < 2:
        raise NpoError(f"relearning needs at least 2 questions, got {len(questions)}")
    paths = {"reference": str(reference_dir), "retain": retain_model_dir and str(retain_model_dir),
             "model": str(model_dir)}
    for p in filter(None, paths.values()):
        check_model_path(p)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raw = {role: _probe_one(p, role, questions, conv, probes, quant_bits, batch_size, device)
           for role, p in paths.items() if p}
    result = {"mode": "mcq", "model": paths["model"], "reference": paths["reference"],
              "retain_model": paths["retain"], "task": str(task), "convention": mcq_convention, "limit": limit,
              "seed": seed, "probes": list(probes), "title": title or _title(paths["model"]),
              "accuracy": {role: {**_acc(r["correct"]), "subjects": r["subjects"]} for role, r in raw.items()}}

    if "relearn" in probes:
        learn, held = split_for_relearning(len(questions), relearn_fraction, seed)
        kw = dict(epochs=relearn_epochs, lr=relearn_lr, batch_size=relearn_batch_size, template="raw",
                  max_length=max_length, seed=seed, overrides=relearn_overrides or {}, keep=keep_relearned)
        held_qs = [questions[i] for i in held]
        rel = {"fraction": relearn_fraction, "epochs": relearn_epochs, "lr": relearn_lr,
               "batch_size": relearn_batch_size, "n_relearn": len(learn), "n_heldout": len(held),
               "overrides": relearn_overrides or {}}
        train = relearn_records([questions[i] for i in learn], conv)
        for role in ("model", "retain") if paths["retain"] else ("model",):
            relearned = relearn(paths[role], train, out / "relearn", f"{role}_relearned", **kw)
            m, tok = load_for_scoring(str(relearned), device)
            lls, _ = score(m, tok, held_qs, conv, max_length=default_max_length(m, tok), batch_size=batch_size)
            del m
            _release()
            if not keep_relearned:
                shutil.rmtree(relearned, ignore_errors=True)
            rel[role] = {"before": _acc(raw[role]["correct"], held), "after": _acc(_correct(held_qs, lls))}
        rel["reference"] = _acc(raw["reference"]["correct"], held)
        rel["recovered"] = recovered(rel["model"]["before"]["accuracy"], rel["model"]["after"]["accuracy"],
                                     rel["reference"]["accuracy"])
        result["relearn"] = rel

    if "quant" in probes:
        base = result["accuracy"]["model"]["accuracy"]
        q = {"layers": "every nn.Linear except the LM head (kept in full precision)",
             "scheme": "symmetric round-to-nearest, one scale per output channel",
             "n_layers": raw["model"]["n_quantized"], "unquantized": base}
        for bits, correct in raw["model"]["quant"].items():
            a = _acc(correct)
            q[f"int{bits}"] = {**a, "delta": a["accuracy"] - base}
        result["quant"] = q

    return write_result(out, result, markdown, t0)


def markdown(r: dict) -> str:
    lines = [f"## MCQ probes: {r['title']}", "",
             models_line(r) + f"; task `{r['task']}` (convention `{r['convention']}`). See docs/mcq.md.", "",
             "| model | accuracy | questions |", "|---|---|---|"]
    lines += [f"| {ROLES[role]} | {_f(a['accuracy'])} | {a['n']} |" for role, a in r["accuracy"].items()]
    if "relearn" in r:
        rl = r["relearn"]
        lines += ["", f"### Relearning ({rl['epochs']} epochs at lr {rl['lr']:g} on {rl['n_relearn']} questions; "
                  f"accuracy on the {rl['n_heldout']} held back)", "", "| | accuracy |", "|---|---|",
                  f"| unlearned, before | {_f(rl['model']['before']['accuracy'])} |",
                  f"| unlearned, after relearning | {_f(rl['model']['after']['accuracy'])} |",
                  f"| reference | {_f(rl['reference']['accuracy'])} |",
                  f"| fraction recovered | {_f(rl['recovered'], '.2f')} |"]
        if "retain" in rl:
            lines += [f"| control: retain model, before | {_f(rl['retain']['before']['accuracy'])} |",
                      f"| control: retain model, after relearning | {_f(rl['retain']['after']['accuracy'])} |"]
    if "quant" in r:
        q = r["quant"]
        lines += ["", f"### Quantization ({q['scheme']}; {q['layers']})", "", "| weights | accuracy | Δ |",
                  "|---|---|---|", f"| unquantized | {_f(q['unquantized'])} | |"]
        lines += [f"| {name} | {_f(v['accuracy'])} | {_f(v['delta'], '+.3f')} |"
                  for name, v in q.items() if name.startswith("int")]
    return "\n".join(lines) + "\n"
