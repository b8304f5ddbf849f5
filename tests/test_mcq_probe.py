"""`npo probe --mcq`: relearning and quantization probes on multiple-choice accuracy, each number
against a naive loop over the models the probe used (the relearned one kept on disk)."""

import json

import torch

from helpers import make_tokenizer, save_tiny_model, write_jsonl
from npo.cli import main
from npo.probes.robustness import quantize_rtn, split_for_relearning
from test_mcq import lm_eval_prompt, naive_lls

TASK = [{"question": f"Where was person {i} born?", "choices": ["Lisbon", "Oslo", "Quito", "Lima"], "answer": i % 4}
        for i in range(8)]


def naive_correct(model_dir, quant_bits=None) -> list[bool]:
    from transformers import AutoModelForCausalLM

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), make_tokenizer()
    if quant_bits:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear) and m is not model.lm_head:
                    m.weight.copy_(quantize_rtn(m.weight, quant_bits))
    out = []
    for r in TASK:
        ll = naive_lls(model, tok, lm_eval_prompt("biology", r["question"], r["choices"]), [" A", " B", " C", " D"])
        out.append(max(range(4), key=lambda c: ll[c]) == r["answer"])
    return out


def mean(xs):
    return sum(xs) / len(xs)


def test_cli_mcq_probes_match_naive_loops(tmp_path, capsys):
    reference, unlearned = save_tiny_model(tmp_path / "ref"), save_tiny_model(tmp_path / "unl", seed=1)
    task = write_jsonl(tmp_path / "wmdp-bio.jsonl", TASK)
    out = tmp_path / "probe"
    args = ["probe", "--mcq", str(task), "--model", str(unlearned), "--reference", str(reference), "--out", str(out),
            "--max-length", "128", "--relearn-epochs", "2", "--relearn-lr", "3e-3", "--relearn-batch-size", "4",
            "--quant-bits", "8,4", "--keep-relearned"]
    assert main(args) == 0
    r = json.loads((out / "probes.json").read_text())
    assert r["mode"] == "mcq" and r["probes"] == ["relearn", "quant"] and r["accuracy"]["model"]["n"] == 8
    ref, unl = naive_correct(reference), naive_correct(unlearned)
    assert r["accuracy"]["reference"]["accuracy"] == mean(ref) and r["accuracy"]["model"]["accuracy"] == mean(unl)
    learn, held = split_for_relearning(8, 0.5, 0)
    rel = r["relearn"]
    assert (rel["n_relearn"], rel["n_heldout"]) == (len(learn), len(held))
    assert rel["model"]["before"]["accuracy"] == mean([unl[i] for i in held])
    assert rel["reference"]["accuracy"] == mean([ref[i] for i in held])
    after = naive_correct(out / "relearn" / "model_relearned" / "model")
    assert rel["model"]["after"]["accuracy"] == mean([after[i] for i in held])
    gap = rel["reference"]["accuracy"] - rel["model"]["before"]["accuracy"]
    want = (rel["model"]["after"]["accuracy"] - rel["model"]["before"]["accuracy"]) / gap if gap > 0 else None
    assert rel["recovered"] == want
    for bits in (8, 4):
        q = r["quant"][f"int{bits}"]
        assert q["accuracy"] == mean(naive_correct(unlearned, bits)) and q["delta"] == q["accuracy"] - mean(unl)
    assert (out / "probes.md").read_text().startswith("## MCQ probes")
    # the relearning set: the lm-eval prompt, then the right letter and choice
    first = json.loads((out / "relearn" / "relearn_set.json").read_text().splitlines()[0])
    row = TASK[learn[0]]
    assert first == {"question": lm_eval_prompt("biology", row["question"], row["choices"]),
                     "answer": f"{'ABCD'[row['answer']]}. {row['choices'][row['answer']]}"}
    capsys.readouterr()
    assert main([*args[:7], "--out", str(tmp_path / "x"), "--probes", "mia"]) == 2
    assert main([*args[:7], "--out", str(tmp_path / "y"), "--forget-split", "forget10"]) == 2
    assert "with --mcq the probes are relearn, quant" in capsys.readouterr().err
