"""One `npo unlearn` or `npo eval` command, run in this process through the real CLI, with observers.

    .venv/bin/python benchmarks/bench_cli.py unlearn --model DIR --data TOFU --method npo_rt [--steps 10]
        [--batch-size 4] [--threads 1] [--save] [key=value ...]
    .venv/bin/python benchmarks/bench_cli.py eval --model DIR --data TOFU [--items 30] [--batch-size B]
        [--max-new-tokens 200] [--threads 1] [-- more npo eval flags]

It calls `npo.cli.main` unchanged and only observes. Printed last, as one JSON line:
- both: CPU time and RSS at start (before `import torch`), after the imports, the whole process's
  CPU time and ru_maxrss at the end (a parent measuring with wait4 sees the same);
- unlearn: process CPU and wall time at the end of every optimizer step (CPU/step over steps
  2..N: set-up and the first, AdamW-allocating step left out), the CPU time of `optimizer.step`
  alone (the rest of a step is data, forward, backward and the gradient norm), the VmHWM high-water mark of the
  steps (reset with `echo 5 > /proc/self/clear_refs` just before the first step, after the
  model, data and reference cache exist), and the losses; the final save is skipped unless
  `--save` (saving is not part of a step, and the other side of a comparison may not save);
- eval: CPU time in scoring (`score_texts`) and in generation (`generate`, decoding included),
  the whole `evaluate_model`, and the new tokens of every generation batch.

Used by drivers that compare npo with other code side by side on the same machine; the driver
itself is not part of this repository (BENCHMARKS.md, section 4).
"""

from __future__ import annotations

import time

CPU0, WALL0 = time.process_time(), time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import reset_peak_rss  # noqa: E402


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


RECORD: dict = {"rss_start_mib": _status("VmRSS")}


def _unlearn(args, extra: list[str]) -> list[str]:
    import npo.train as train

    steps: list[tuple[float, float, float]] = []
    losses: list[float] = []
    opt: list[float] = []
    orig_step = train.Trainer.train_step

    def train_step(self):
        if not steps:
            RECORD["cpu_before_steps_s"] = time.process_time() - CPU0
            RECORD["rss_before_steps_mib"] = _status("VmRSS")
            RECORD["hwm_before_steps_mib"] = _status("VmHWM")
            RECORD["hwm_reset"] = reset_peak_rss()
            steps.append((time.process_time(), time.perf_counter(), 0.0))
            step_fn = self.optimizer.step

            def timed_step(*a, **k):
                t = time.process_time()
                try:
                    return step_fn(*a, **k)
                finally:
                    opt.append(time.process_time() - t)

            self.optimizer.step = timed_step
        out = orig_step(self)
        steps.append((time.process_time(), time.perf_counter(), _status("VmHWM")))
        losses.append(out.get("loss", float("nan")))
        return out

    train.Trainer.train_step = train_step
    if not args.save:
        train.save_model = lambda *a, **k: None

    def finish():
        cpu = [s[0] for s in steps]
        wall = [s[1] for s in steps]
        n = len(steps) - 1
        RECORD.update({"steps": n, "first_step_cpu_s": cpu[1] - cpu[0],
                       "cpu_each_step_s": [round(b - a, 4) for a, b in zip(cpu, cpu[1:], strict=False)],
                       "cpu_per_step_s": (cpu[-1] - cpu[1]) / max(1, n - 1),
                       "wall_per_step_s": (wall[-1] - wall[1]) / max(1, n - 1),
                       "opt_cpu_per_step_s": sum(opt[1:]) / max(1, len(opt) - 1),
                       "hwm_in_steps_mib": steps[-1][2], "losses": losses})

    RECORD["_finish"] = finish
    out = tempfile.mkdtemp(prefix="npo-bench-cli-")
    return ["unlearn", "--model", args.model, "--data", args.data, "--method", args.method,
            "--forget", args.forget, "--retain", args.retain, "--batch-size", str(args.batch_size or 4),
            "--out", out, "--overwrite", "--lr", str(args.lr), "template=qa", f"max_steps={args.steps}", *extra]


def _eval(args, extra: list[str]) -> list[str]:
    import npo.eval.tofu as tofu

    acc = {"score_cpu_s": 0.0, "gen_cpu_s": 0.0, "evaluate_cpu_s": 0.0, "gen_new_tokens": []}

    def timed(fn, key):
        def wrapper(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                acc[key] += time.process_time() - t
        return wrapper

    tofu.score_texts = timed(tofu.score_texts, "score_cpu_s")
    tofu.generate = timed(tofu.generate, "gen_cpu_s")
    tofu.evaluate_model = timed(tofu.evaluate_model, "evaluate_cpu_s")
    import npo.eval.scoring as scoring

    orig_batches = getattr(scoring, "_decode_batch", None)
    if orig_batches is not None:  # the new-token count of every generation batch
        def decode_batch(*a, **k):
            out = orig_batches(*a, **k)
            acc["gen_new_tokens"].append(int(out.shape[1]) if hasattr(out, "shape") else len(out[0]))
            return out
        scoring._decode_batch = decode_batch
    RECORD["_finish"] = lambda: RECORD.update(acc)
    data = args.data
    if args.items:
        data = _subsample(args.data, args.items)
    out = tempfile.mkdtemp(prefix="npo-bench-cli-")
    return ["eval", "--model", args.model, "--data", data, "--forget-split", args.forget, "--template", "qa",
            *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
            "--max-new-tokens", str(args.max_new_tokens), "--out", out, *extra]


def _subsample(data: str, items: int) -> str:
    """A TOFU-layout directory with the first `items` rows of every eval set in `data` (before timing)."""
    out = Path(tempfile.mkdtemp(prefix="npo-bench-data-"))
    for f in Path(data).glob("*_perturbed.json"):  # JSON lines
        (out / f.name).write_text("".join(line + "\n" for line in f.read_text().splitlines()[:items]))
    return str(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("unlearn", "eval"))
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--method", default="npo_rt")
    p.add_argument("--forget", default="forget10")
    p.add_argument("--retain", default="retain90")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, help="unlearn: 4 (default); eval: npo eval's default")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--items", type=int, default=30, help="eval: first N items of each set (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", action="store_true", help="unlearn: keep the final save of the model")
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    RECORD.update({"cpu_after_torch_s": time.process_time() - CPU0, "rss_after_torch_mib": _status("VmRSS")})
    argv = (_unlearn if args.command == "unlearn" else _eval)(args, extra)
    from npo.cli import main as cli

    rc = cli(argv)
    if rc:
        sys.exit(rc)
    RECORD.pop("_finish")()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    RECORD.update({"command": args.command, "method": args.method, "argv": argv, "threads": torch.get_num_threads(),
                   "cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": time.perf_counter() - WALL0,
                   "maxrss_mib": ru.ru_maxrss / 1024, "load_avg_1m": os.getloadavg()[0]})
    print(json.dumps(RECORD))


if __name__ == "__main__":
    main()
