"""How much each of the NPO authors' choices that configs/tofu/paper.yaml reproduces changes, measured
on the bench model and TOFU data (docs/tofu.md quotes this script's output):

- the schedule: steps, warm-up and summed lr factors of `schedule=epochs` against `official` per split;
- `token_mean=micro` for idk_rt (one token mean over refusals and retain answers) against npo's sum of
  two token means: loss ratio, gradient-norm ratio, gradient cosine on the same micro-batch;
- `kl=official` (every position of batches padded to max_length) against the answer-token KL: the
  same three numbers for the KL term alone, after a few steps of gradient ascent;
- the prompt/answer boundary: how many TOFU items get different labels when the question is
  tokenized alone (the original code) instead of read off the full text's offsets (npo);
- `--caps`: npo eval's default caps against legacy300's official ones on given models.

    .venv/bin/python benchmarks/tofu_fidelity.py [--tokenizer DIR_OR_GGUF_MODEL] [--gguf-file F] [--model DIR]
    .venv/bin/python benchmarks/tofu_fidelity.py --caps MODEL [MODEL ...] --caps-data DATA
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import require_tofu, save_bench_model  # noqa: E402

SPLITS = {"forget01": 40, "forget05": 200, "forget10": 400, "forget20": 800, "forget50": 2000, "forget90": 3600}


def schedules(window: int = 32, epochs: int = 10) -> list[str]:
    from npo.optim import schedule

    lines = [f"{'split':<9} {'epochs: steps, warm-up, sum lr':>32} {'official: steps, warm-up, sum lr':>34}  ratio"]
    for split, n in SPLITS.items():
        row = []
        for kind in ("epochs", "official"):
            _, total, warmup, factor = schedule(kind, n, window, epochs, 1.0)
            row.append((total, warmup, sum(factor(k) for k in range(total))))
        (t1, w1, s1), (t2, w2, s2) = row
        lines.append(f"{split:<9} {t1:>14} {w1:>7} {s1:>9.2f} {t2:>16} {w2:>7} {s2:>9.2f}  {s1 / s2:.2f}x")
    return lines


def _trainer(model_dir: Path, data: Path, out: Path, **kw):
    from npo.config import build
    from npo.methods import METHODS
    from npo.train import Trainer

    cfg = build(None, {"model": str(model_dir), "data": str(data), "forget": "forget10", "retain": "retain90",
                       "template": "qa", "max_length": 500, "batch_size": 4, "out": str(out), "seed": 0, **kw})
    return Trainer(cfg, METHODS[cfg.method])


def _grad(trainer, idx, window) -> tuple[float, torch.Tensor]:
    trainer.optimizer.zero_grad(set_to_none=True)
    loss, _, _ = trainer.micro_backward(idx, window, last=True)
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    return float(loss), grads


def ga_steps(model_dir: Path, data: Path, steps: int = 5) -> dict[str, torch.Tensor]:
    """The bench model's weights after a few gradient-ascent steps on forget10."""
    trainer = _trainer(model_dir, data, Path(tempfile.mkdtemp()) / "ga", method="ga", lr=1e-3, warmup_epochs=0)
    for _ in range(steps):
        trainer.train_step()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def compare(model_dir: Path, data: Path, method: str, key: str, values: tuple[str, str],
            moved: dict | None = None, **extra) -> str:
    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp())
    results = []
    for value in values:
        trainer = _trainer(model_dir, data, out / value, method=method, **{key: value}, overwrite=True, **extra)
        if moved is not None:  # unlearned a little: the KL term and its gradient are not zero
            with torch.no_grad():
                for name, p in trainer.model.named_parameters():
                    p.copy_(moved[name])
        window = trainer._windows()
        idx = {name: w[:4] for name, w in window.items()}
        window = dict(idx)  # one micro-batch of 4 forget and 4 retain examples is the whole window
        results.append(_grad(trainer, idx, window))
    (l1, g1), (l2, g2) = results
    cos = float(torch.nn.functional.cosine_similarity(g1, g2, dim=0))
    return (f"{method:<7} {key}={values[1]} vs {values[0]}: loss {l2 / l1:.2f}x, gradient norm "
            f"{float(g2.norm() / g1.norm()):.2f}x, cosine {cos:.2f}")


def boundaries(tok, data: Path, template: str) -> str:
    """Items whose label start differs between the full text's offsets (npo) and tokenizing the
    question alone (the original code)."""
    from npo.data.batches import tokenize_qa
    from npo.data.qa import load_qa
    from npo.data.templates import render_prompt

    records = load_qa(str(data), "full")
    differ = 0
    for r in records:
        ex = tokenize_qa(tok, template, r.question, r.answer, 512)
        alone = len(tok(render_prompt(template, r.question, tok), add_special_tokens=True)["input_ids"])
        differ += alone != ex.n_prompt
    return f"{template}: {differ} of {len(records)} items of `full` start their labels elsewhere"


def eval_caps(model_dir: Path, data: Path, template: str) -> str:
    """`npo eval` under full and legacy300 on one model: identical generations, forget ROUGE, MU."""
    from npo.eval.logs import load_log_dir
    from npo.eval.tofu import evaluate_model
    from npo.modeling import load_model, load_tokenizer

    model, tok = load_model(str(model_dir), torch.float32), load_tokenizer(str(model_dir))
    logs, summaries = {}, {}
    for protocol in ("full", "legacy300"):
        out = Path(tempfile.mkdtemp()) / protocol
        summaries[protocol] = evaluate_model(model, tok, data=str(data), forget_split="forget10", template=template,
                                             out=out, protocol=protocol, max_new_tokens=200, batch_size=64)
        logs[protocol] = [g[1] for name, log in load_log_dir(out).items() for g in log["generated_text"]]
    same = sum(a == b for a, b in zip(logs["full"], logs["legacy300"], strict=True))
    a, b = summaries["full"], summaries["legacy300"]
    return (f"{model_dir}: {same} of {len(logs['full'])} generations the same under full and legacy300; forget "
            f"ROUGE-L {a['forget_rouge']:.3f} vs {b['forget_rouge']:.3f}, Model Utility {a['model_utility']:.4f} vs "
            f"{b['model_utility']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", help="a tokenizer for the boundary count (e.g. a SmolLM2 GGUF directory)")
    p.add_argument("--gguf-file")
    p.add_argument("--caps", nargs="+", type=Path, metavar="MODEL",
                   help="compare npo eval's full and legacy300 caps on these models (with --caps-data, the qa template)")
    p.add_argument("--caps-data", type=Path, help="the TOFU-layout data of --caps (e.g. a demo's data/)")
    p.add_argument("--model", type=Path, help="measure on this model (default: the random-weight bench model); "
                                              "benchmarks/bench_eval.py caches a trained one")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.caps:
        for model in args.caps:
            print(eval_caps(model, args.caps_data, "qa"))
        return
    data = require_tofu()
    print("\n".join(schedules()))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or Path(tmp) / "model"
        if args.model is None:
            save_bench_model(model_dir, data)
        print(f"model: {args.model or 'the random-weight bench model'}")
        print(compare(model_dir, data, "idk_rt", "token_mean", ("window", "micro")))
        print(compare(model_dir, data, "ga_kl", "kl", ("answer", "official"), moved=ga_steps(model_dir, data),
                      forget_weight=0.0) + " (the KL term alone, after 5 steps of GA at lr 1e-3)")
    if args.tokenizer:
        from npo.modeling import load_tokenizer

        tok = load_tokenizer(args.tokenizer, args.gguf_file)
        for template in ("llama2-tofu", "tofu-qa", "qa"):
            print(boundaries(tok, data, template))


if __name__ == "__main__":
    main()
