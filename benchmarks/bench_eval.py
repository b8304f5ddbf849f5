"""The TOFU evaluation of the bench model: `npo.eval.tofu.evaluate_model` against a naive loop.

    .venv/bin/python benchmarks/bench_eval.py [--reps N] [--items N | --all-items] [--max-new-tokens T] [--random-weights] [--quick]

Both evaluate the forget10 protocol's four sets (forget10_perturbed, retain_perturbed, real_authors,
world_facts; `--items N` keeps the first N of each, `--all-items` all 1,017), batch size 16, and
write the same per-item statistics (the script checks that their losses agree).

- project: `evaluate_model` (one forward per distinct (prompt, answer) text, sorted by length, LM head on
  answer tokens only; greedy generation batched with left padding, prompts sorted by length, stopped at EOS);
- naive, as the original TOFU evaluation does it: per set, one pass per answer kind (ground truth,
  paraphrase, then each perturbed index), batches in dataset order, full logits over every position;
  greedy generation in dataset order to the length limit (`min_new_tokens = max_new_tokens`, no EOS stop).

The bench model is first fine-tuned briefly on 800 TOFU pairs (`common.trained_bench_model`, cached), so
that it ends its answers with EOS like any model that gets evaluated; `--random-weights` evaluates the
random-weight model instead (it never emits EOS, so the project's EOS stop saves nothing).

Everything runs in this one process, the two paths alternating (order swapped every repetition) after
one small warm-up of each. Timings are process CPU time (all threads) and wall time; the scoring and
generation parts are timed separately too (the project's by wrapping its module functions).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    TOFU,
    TRAINED_RECIPE,
    Clock,
    machine_line,
    paired_ratios,
    require_tofu,
    save_bench_model,
    spread,
    table,
    trained_bench_model,
    verdict,
)

SPLITS = {"retain": "retain_perturbed", "forget": "forget10_perturbed", "real_authors": "real_authors_perturbed",
          "world_facts": "world_facts_perturbed"}
TARGET = 0.35


def subsample(data: Path, out: Path, items: int | None) -> Path:
    """A TOFU-layout directory with the first `items` rows of each eval split (all rows if None)."""
    if items is None:
        return data
    from npo.data.qa import load_qa

    out.mkdir(parents=True, exist_ok=True)
    import json

    for split in SPLITS.values():
        rows = load_qa(str(data), split)[:items]
        (out / f"{split}.json").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    return out


class Timers:
    """Wraps the project's scoring and generation functions to time them (behaviour unchanged)."""

    def __init__(self):
        self.score = self.gen = 0.0
        self.new_tokens: list[int] = []

    def install(self, model):
        import time

        import npo.eval.scoring as scoring
        import npo.eval.tofu as tofu

        orig_score, orig_gen, orig_decode = tofu.score_texts, tofu.generate, scoring._decode_batch
        timers = self

        def timed(fn, attr):
            def wrapper(*a, **k):
                t = time.process_time()
                try:
                    return fn(*a, **k)
                finally:
                    setattr(timers, attr, getattr(timers, attr) + time.process_time() - t)
            return wrapper

        def decode_batch(*a, **k):
            out = orig_decode(*a, **k)  # the new tokens of one batch
            timers.new_tokens.append(out.shape[1])
            return out

        tofu.score_texts, tofu.generate = timed(orig_score, "score"), timed(orig_gen, "gen")
        scoring._decode_batch = decode_batch

        def uninstall():
            tofu.score_texts, tofu.generate = orig_score, orig_gen
            scoring._decode_batch = orig_decode

        return uninstall


def run_project(model, tok, data: Path, max_new_tokens: int, batch_size: int, out: Path) -> dict:
    from npo.eval.tofu import evaluate_model

    timers = Timers()
    uninstall = timers.install(model)
    try:
        with Clock() as c:
            evaluate_model(model, tok, data=str(data), forget_split="forget10", template="qa", out=out,
                           protocol="full", max_new_tokens=max_new_tokens, batch_size=batch_size)
    finally:
        uninstall()
    from npo.eval.logs import load_log_dir

    logs = load_log_dir(out)
    return {"cpu": c.cpu, "wall": c.wall, "score_cpu": timers.score, "gen_cpu": timers.gen,
            "new_tokens": statistics.mean(timers.new_tokens),
            "gt_loss": {name: list(log["gt_loss"]) for name, log in logs.items()}}


def naive_eval(model, tok, data: Path, max_new_tokens: int, batch_size: int) -> dict:
    """The original TOFU evaluation loop, in the shape its code has (see the module docstring)."""
    import time

    import torch

    from npo.data.batches import collate, tokenize_qa
    from npo.data.qa import load_qa
    from npo.data.templates import render_prompt
    from npo.eval.tofu import base_answer, item_log
    from npo.logprobs import sequence_logprobs

    model.eval()
    score_cpu = gen_cpu = 0.0
    new_tokens, gt_loss = [], {}
    with torch.no_grad():
        for name, split in SPLITS.items():
            recs = load_qa(str(data), split)
            kinds = [[r.answer for r in recs], [base_answer(name, r) for r in recs]]
            kinds += [[r.perturbed_answer[j] for r in recs] for j in range(len(recs[0].perturbed_answer))]
            t = time.process_time()
            scores = {}
            for answers in kinds:
                for start in range(0, len(recs), batch_size):
                    part = list(range(start, min(start + batch_size, len(recs))))
                    examples = [tokenize_qa(tok, "qa", recs[i].question, answers[i], 512) for i in part]
                    batch = collate(examples, tok.pad_token_id)
                    logp, n = sequence_logprobs(model, batch, full_logits=True)
                    for i, lp, cnt in zip(part, logp.tolist(), n.tolist(), strict=True):
                        scores[(recs[i].question, answers[i])] = (lp, int(cnt))
            score_cpu += time.process_time() - t
            t = time.process_time()
            prompts = [render_prompt("qa", r.question, tok) for r in recs]
            gens = []
            side, tok.padding_side = tok.padding_side, "left"
            for start in range(0, len(prompts), batch_size):
                batch = tok(prompts[start:start + batch_size], return_tensors="pt", padding=True)
                out = model.generate(**batch, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                new = out[:, batch["input_ids"].shape[1]:]
                new_tokens.append(new.shape[1])
                gens += [g.strip() for g in tok.batch_decode(new, skip_special_tokens=True)]
            tok.padding_side = side
            gen_cpu += time.process_time() - t
            logs = item_log(name, recs, scores, prompts, gens)  # the same ROUGE and log assembly
            gt_loss[name] = logs["gt_loss"]
    return {"score_cpu": score_cpu, "gen_cpu": gen_cpu, "new_tokens": statistics.mean(new_tokens),
            "gt_loss": gt_loss}


def run_naive(model, tok, data: Path, max_new_tokens: int, batch_size: int) -> dict:
    with Clock() as c:
        rec = naive_eval(model, tok, data, max_new_tokens, batch_size)
    return {"cpu": c.cpu, "wall": c.wall, **rec}


def eos_lengths(tok, data: Path, batch_size: int) -> float:
    """Mean over the project's generation batches (prompts of all sets sorted by length) of the longest
    reference answer + EOS: what a model that has learnt the answers would generate before stopping."""
    from npo.data.batches import tokenize_qa
    from npo.data.qa import load_qa

    recs = [r for split in SPLITS.values() for r in load_qa(str(data), split)]
    prompt_len = [tokenize_qa(tok, "qa", r.question, r.answer, 512).n_prompt for r in recs]
    answer_len = [len(tok(r.answer, add_special_tokens=False)["input_ids"]) + 1 for r in recs]
    order = sorted(range(len(recs)), key=lambda i: prompt_len[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return statistics.mean(max(answer_len[i] for i in b) for b in batches)


def agreement(a: dict, b: dict) -> float:
    """Largest relative difference of the ground-truth losses of the two paths."""
    worst = 0.0
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            worst = max(worst, abs(x - y) / max(1.0, abs(y)))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--items", type=int, default=16, help="first N items of each eval set (default 16)")
    p.add_argument("--all-items", action="store_true", help="the full protocol: 400 + 400 + 100 + 117 items")
    p.add_argument("--max-new-tokens", type=int, default=200, help="generation limit (TOFU and npo: 200)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="2 repetitions, 16 items per set, 16 new tokens")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine, idle OpenMP threads spin and inflate CPU time)")
    p.add_argument("--data", type=Path, default=TOFU)
    p.add_argument("--random-weights", action="store_true",
                   help="evaluate the random-weight bench model (it never emits EOS: generation always runs to the limit)")
    p.add_argument("--model-cache", type=Path, default=Path.home() / ".cache" / "npo-bench" / "eval-model",
                   help="where the briefly trained bench model is kept between runs")
    args = p.parse_args()
    if args.quick:
        args.reps, args.items, args.max_new_tokens = 2, 16, 16
    items = None if args.all_items else args.items
    data = require_tofu(args.data)
    import torch
    from transformers import AutoModelForCausalLM

    from npo.modeling import load_tokenizer

    torch.set_num_threads(args.threads)
    print("bench_eval:", machine_line())
    tmp = Path(tempfile.mkdtemp(prefix="npo-bench-eval-"))
    try:
        facts = save_bench_model(tmp / "model", data)
        model_dir = tmp / "model" if args.random_weights else trained_bench_model(args.model_cache, data)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tok = load_tokenizer(str(model_dir))
        sub = subsample(data, tmp / "data", items)
        from npo.data.qa import load_qa

        counts = {name: len(load_qa(str(sub), split)) for name, split in SPLITS.items()}
        weights = ("random weights" if args.random_weights else
                   f"fine-tuned for {TRAINED_RECIPE['epochs']} epochs on {'+'.join(TRAINED_RECIPE['train'])} "
                   f"(cached in {args.model_cache})")
        print(f"bench model: {facts['params']:,} parameters, vocab {facts['vocab']:,}, {weights}, fp32")
        print(f"items: {', '.join(f'{k} {v}' for k, v in counts.items())}"
              f"{' (full protocol)' if items is None else f' (first {items} of each set: --items; --all-items for all)'}"
              f"; batch {args.batch_size}; max_new_tokens {args.max_new_tokens}; {args.reps} repetitions\n")
        warm = subsample(data, tmp / "warm", 2)
        run_project(model, tok, warm, 4, args.batch_size, tmp / "out-warm")
        run_naive(model, tok, warm, 4, args.batch_size)
        project, naive = [], []
        for rep in range(args.reps):
            for path in (["project", "naive"] if rep % 2 == 0 else ["naive", "project"]):
                if path == "project":
                    rec = run_project(model, tok, sub, args.max_new_tokens, args.batch_size, tmp / f"out{rep}")
                    project.append(rec)
                else:
                    rec = run_naive(model, tok, sub, args.max_new_tokens, args.batch_size)
                    naive.append(rec)
                print(f"  rep {rep} {path:8s} cpu {rec['cpu']:7.1f}s wall {rec['wall']:7.1f}s "
                      f"(scoring cpu {rec['score_cpu']:6.1f}s, generation cpu {rec['gen_cpu']:6.1f}s, "
                      f"{rec['new_tokens']:.0f} new tokens per batch)", flush=True)
        report(project, naive, args, eos_lengths(tok, sub, args.batch_size))
        print(f"\nlargest relative difference of ground-truth losses, project vs naive: "
              f"{agreement(project[0]['gt_loss'], naive[0]['gt_loss']):.1e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(project: list[dict], naive: list[dict], args, eos_len: float) -> None:
    rows = []
    for key, label in (("cpu", "total CPU s"), ("wall", "total wall s"), ("score_cpu", "scoring CPU s"),
                       ("gen_cpu", "generation CPU s")):
        a, b = [r[key] for r in project], [r[key] for r in naive]
        rows.append([label, spread(a), spread(b), spread(paired_ratios(a, b), "{:.2f}")])
    print("\nmedian [min-max] over repetitions; ratio = project / naive, paired within a repetition\n")
    print(table(rows, ["measure", "project", "naive", "ratio"]))
    ratios = paired_ratios([r["cpu"] for r in project], [r["cpu"] for r in naive])
    med = statistics.median(ratios)
    print(f"\nTOFU evaluation CPU time ratio {med:.2f} [{min(ratios):.2f}-{max(ratios):.2f}] at max_new_tokens "
          f"{args.max_new_tokens}: {verdict(med, TARGET)}")
    gen = statistics.median(r["new_tokens"] for r in project)
    print(f"project generations ran {gen:.0f} new tokens per batch on median (limit {args.max_new_tokens}); "
          f"the reference answers + EOS are {eos_len:.0f} tokens (longest of a batch, mean over batches)")
    if args.random_weights and eos_len < args.max_new_tokens:
        proj = [(r["cpu"] - r["gen_cpu"] * (1 - eos_len / args.max_new_tokens)) / n["cpu"]
                for r, n in zip(project, naive, strict=True)]
        print(f"projection, not a measurement: a model that stops after its reference answer would generate "
              f"{eos_len:.0f} tokens per batch (longest answer + EOS, mean over the project's batches); scaling the "
              f"project's generation time by {eos_len:.0f}/{args.max_new_tokens} gives a ratio of "
              f"{statistics.median(proj):.2f} [{min(proj):.2f}-{max(proj):.2f}]")


if __name__ == "__main__":
    main()
