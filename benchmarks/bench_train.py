"""One unlearning step of `npo` and `npo_rt`: this project's path against the naive path, side by side.

    .venv/bin/python benchmarks/bench_train.py [--reps N] [--steps S] [--quick]

Bench model: random-weight Llama, hidden 256, 4 layers, 8 heads, vocabulary 32,000 (19.5M parameters);
TOFU forget10 / retain90, batch 8, template qa, max_length 512, fp32 on CPU.

- project: the reference log-probs of the forget answers cached by one no-grad pass before training
  (`reference=cached`), the LM head and log-softmax on labelled positions only (`logits=labelled`),
  length-grouped windows (`BatchStream`);
- naive: a frozen second model recomputes the reference every step (`reference=online`, scoring with
  full logits as the original code does), the LM head over every position (`logits=full`), windows in
  plain random order (`random_order`), each padded to its longest example.

Both go through the real `npo.train.Trainer`: `Trainer(cfg, method)`, then `train_step()`. Every
(path, method, repetition) runs in its own process, so its peak RSS is its own: VmHWM from
/proc/self/status, reset (`echo 5 > /proc/self/clear_refs`) after set-up and read after the last step,
so it covers the training steps only (warm-up step included, since it allocates the optimizer state);
ru_maxrss (whole process, set-up included) is printed too. Within a repetition the two paths run back to
back, their order alternating; ratios are paired within a repetition and summarised by their median
[min-max].

The reference cache costs one forward pass over the 400 forget examples. It is computed once per run by
the real `Trainer._reference_cache()` in a process of its own (its time is printed and amortised over the 500
steps of the paper's 10-epoch recipe), saved, and handed to the project's step processes through
`Trainer._reference`, so that every repetition does not spend a minute recomputing the same tensor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    TOFU,
    Clock,
    machine_line,
    max_rss_mib,
    paired_ratios,
    peak_rss_mib,
    require_tofu,
    reset_peak_rss,
    rss_mib,
    run_worker,
    save_bench_model,
    spread,
    table,
    verdict,
)

PATHS = {"project": {"reference": "cached", "logits": "labelled"},
         "naive": {"reference": "online", "logits": "full"}}
TARGETS = {("cpu", "npo"): 0.7, ("cpu", "npo_rt"): 0.8, ("rss", "npo"): 0.7, ("rss", "npo_rt"): 0.7}
RUN_STEPS = 500  # steps of the paper's recipe on forget10 (10 epochs x 400 / 8), to amortise the cache


# ----------------------------------------------------------------------------- worker (one process per run)


class RandomOrderStream:
    """Windows in plain random order, a fresh permutation each epoch (the naive baseline)."""

    def __init__(self, n: int, window: int, seed: int):
        self.n, self.window, self.seed, self.epoch, self.batches = n, window, seed, 0, []

    def next(self) -> list[int]:
        import torch

        from npo.data.batches import random_order

        if not self.batches:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self.batches, self.epoch = random_order(self.n, self.window, g), self.epoch + 1
        return self.batches.pop(0)


class FullLogitsReference:
    """The naive reference: the frozen copy scores with the LM head over every position (the product's
    `OnlineReference.logprobs` scores labelled positions only, whatever `logits` says)."""

    def __init__(self, online):
        self.online = online

    def logprobs(self, batch: dict):
        import torch

        from npo.logprobs import sequence_logprobs

        with torch.no_grad():
            return sequence_logprobs(self.online.model, batch, full_logits=True)[0]


class Recording:
    """Passes a stream's windows through, noting (padded tokens, real tokens) of each."""

    def __init__(self, stream, examples, drawn: list):
        self.stream, self.examples, self.drawn = stream, examples, drawn

    def next(self) -> list[int]:
        window = self.stream.next()
        lengths = [len(self.examples[i].input_ids) for i in window]
        self.drawn.append((len(window) * max(lengths), sum(lengths)))
        return window


def make_trainer(args, out: Path):
    from npo.config import build
    from npo.methods import METHODS
    from npo.train import Trainer

    cfg = build(None, {"model": args.model, "data": str(args.data), "forget": "forget10", "retain": "retain90",
                       "method": args.method, "template": "qa", "batch_size": 8, "max_length": 512,
                       "epochs": 10, "lr": 1e-5, "seed": args.seed, "out": str(out / "run"), **PATHS[args.path]})
    return Trainer(cfg, METHODS[cfg.method])


def cache_worker(args) -> dict:
    """The real reference pass of the Trainer (`_reference_cache`), timed; the tensor is saved for the
    step workers."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="npo-bench-run-"))
    try:
        trainer = make_trainer(args, out)
        rss_init = rss_mib()
        reset_peak_rss()
        with Clock() as prep:
            cache = trainer._reference_cache(frozenset({"ref_forget"}))
        torch.save(cache["forget"], args.ref_cache)
        return {"prepare_cpu": prep.cpu, "prepare_wall": prep.wall, "examples": len(trainer.sets["forget"]),
                "rss_init_mib": rss_init, "peak_rss_mib": peak_rss_mib()}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    rss_imports = rss_mib()
    out = Path(tempfile.mkdtemp(prefix="npo-bench-run-"))
    try:
        if args.path == "project":  # the cache worker's tensor instead of a second reference pass
            from npo.train import Trainer

            cached = torch.load(args.ref_cache)
            Trainer._reference = lambda self, examples, full: cached.clone()
        with Clock() as prep:
            trainer = make_trainer(args, out)
        rss_init = rss_mib()
        if args.path == "naive":
            for k, name in enumerate(trainer.streams):
                trainer.streams[name] = RandomOrderStream(len(trainer.sets[name]), trainer.window, args.seed + k)
            trainer.online = FullLogitsReference(trainer.online)
        rss_prepared = rss_mib()
        reset = reset_peak_rss()
        for _ in range(args.warmup):
            trainer.train_step()
        drawn: list[tuple[int, int]] = []
        for name, stream in trainer.streams.items():
            trainer.streams[name] = Recording(stream, trainer.sets[name], drawn)
        with Clock() as steps:
            for _ in range(args.steps):
                trainer.train_step()
        peak = peak_rss_mib() if reset else float("nan")
        padded, real = sum(w for w, _ in drawn), sum(n for _, n in drawn)
        return {"path": args.path, "method": args.method, "seed": args.seed, "steps": args.steps,
                "cpu_per_step": steps.cpu / args.steps, "wall_per_step": steps.wall / args.steps,
                "prepare_cpu": prep.cpu, "rss_imports_mib": rss_imports, "rss_init_mib": rss_init,
                "rss_prepared_mib": rss_prepared, "peak_rss_mib": peak, "peak_over_init_mib": peak - rss_init,
                "maxrss_mib": max_rss_mib(), "threads": torch.get_num_threads(),
                "padded_tokens_per_step": padded / args.steps, "padding_share": 1 - real / padded}
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------------------- driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions (each runs both paths, alternating order)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per process (after --warmup steps)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--methods", default="npo,npo_rt")
    p.add_argument("--quick", action="store_true", help="2 repetitions of 1 measured step, for a smoke run")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: on a shared machine, idle OpenMP threads "
                        "spin and inflate CPU time)")
    p.add_argument("--data", type=Path, default=TOFU)
    p.add_argument("--json", type=Path, help="also write every record here")
    # worker-only
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", choices=tuple(PATHS), default="project", help=argparse.SUPPRESS)
    p.add_argument("--method", default="npo", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--ref-cache", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(cache_worker(args) if args.cache_only else worker(args)))
        return
    if args.quick:
        args.reps, args.steps = 2, 1
    data = require_tofu(args.data)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    print("bench_train:", machine_line(args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="npo-bench-model-"))
    try:
        facts = save_bench_model(tmp / "model", data)
        print(f"bench model: Llama hidden 256, 4 layers, 8 heads, intermediate 672, untied head, vocab "
              f"{facts['vocab']:,} (byte-level BPE learned {facts['learned_vocab']:,} on TOFU, the rest reserved), "
              f"{facts['params']:,} parameters, fp32, random weights")
        print("TOFU forget10/retain90, batch 8, template qa, max_length 512, lr 1e-5, AdamW")
        common = ["--model", str(tmp / "model"), "--data", str(data), "--ref-cache", str(tmp / "ref.pt"),
                  "--threads", str(args.threads)]
        cache = run_worker(Path(__file__), ["--cache-only", *common])
        print(f"reference cache (real Trainer._reference_cache, {cache['examples']} forget examples): "
              f"{cache['prepare_cpu']:.1f} s CPU, {cache['prepare_wall']:.1f} s wall, peak RSS "
              f"{cache['peak_rss_mib']:.0f} MiB; amortised over {RUN_STEPS} steps: "
              f"{cache['prepare_cpu'] / RUN_STEPS:.3f} s CPU per step")
        print(f"{args.reps} repetitions x {len(methods)} methods x 2 paths, one process each, "
              f"{args.threads} torch thread(s); "
              f"{args.warmup} warm-up + {args.steps} measured steps per process\n")
        records = []
        for rep in range(args.reps):
            for k, method in enumerate(methods):
                order = ["project", "naive"] if (rep + k) % 2 == 0 else ["naive", "project"]
                for path in order:
                    rec = run_worker(Path(__file__), ["--path", path, "--method", method, "--seed", str(rep),
                                                      "--steps", str(args.steps), "--warmup", str(args.warmup),
                                                      *common])
                    records.append(rec)
                    print(f"  rep {rep} {method:7s} {path:8s} CPU/step {rec['cpu_per_step']:6.2f} s  "
                          f"wall/step {rec['wall_per_step']:6.2f} s  peak RSS {rec['peak_rss_mib']:5.0f} MiB  "
                          f"padding {100 * rec['padding_share']:4.1f}%", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"cache": cache, "records": records}, indent=1))
        report(records, methods, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _row(rows: list, verdicts: list, method: str, label: str, new: list[float], naive: list[float],
         target_key: str | None = None, fmt: str = "{:.3g}") -> None:
    ratios = paired_ratios(new, naive)
    rows.append([method, label, spread(new, fmt), spread(naive, fmt), spread(ratios, "{:.2f}")])
    if target_key:
        med = statistics.median(ratios)
        verdicts.append(f"{method:7s} {label:26s} ratio {med:.2f} [{min(ratios):.2f}-{max(ratios):.2f}]  "
                        f"{verdict(med, TARGETS[(target_key, method)])}")


def report(records: list[dict], methods: list[str], cache: dict) -> None:
    rows: list[list[str]] = []
    verdicts: list[str] = []
    for method in methods:
        mine = [r for r in records if r["method"] == method]

        def both(key: str, recs: list[dict] = mine) -> tuple[list[float], list[float]]:
            return get_all(recs, "project", key), get_all(recs, "naive", key)

        row = lambda *a, **k: _row(rows, verdicts, method, *a, **k)  # noqa: E731, B023 (used at once)
        row("CPU s/step", *both("cpu_per_step"), "cpu")
        new, naive = both("cpu_per_step")
        row(f"CPU s/step + cache/{RUN_STEPS}", [c + cache["prepare_cpu"] / RUN_STEPS for c in new], naive)
        row("wall s/step", *both("wall_per_step"))
        row("peak RSS in steps (MiB)", *both("peak_rss_mib"), "rss", "{:.0f}")
        row("  above loaded model (MiB)", *both("peak_over_init_mib"), None, "{:.0f}")
        row("ru_maxrss, process (MiB)", *both("maxrss_mib"), None, "{:.0f}")
        row("padded tokens/step", *both("padded_tokens_per_step"), None, "{:.0f}")
    print("\nmedian [min-max] over repetitions; ratio = project / naive, paired within a repetition\n")
    print(table(rows, ["method", "measure", "project", "naive", "ratio"]))
    med = lambda path, key: statistics.median(get_all(records, path, key))  # noqa: E731
    print(f"\nRSS before the steps (median over processes): {med('project', 'rss_imports_mib'):.0f} MiB after "
          f"imports, {med('project', 'rss_init_mib'):.0f} MiB with the model and data loaded (Trainer built), "
          f"{med('project', 'rss_prepared_mib'):.0f} (project) / {med('naive', 'rss_prepared_mib'):.0f} (naive, "
          "+ frozen copy) after set-up; both paths then add AdamW state and gradients (149 + 74 MiB)")
    print()
    print("\n".join(verdicts))


def get_all(records: list[dict], path: str, key: str) -> list[float]:
    return [r[key] for r in records if r["path"] == path]


if __name__ == "__main__":
    main()
