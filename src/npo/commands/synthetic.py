"""`npo synthetic`: the paper's synthetic experiment (Figures 3, 4 and 9) from scratch on a CPU.

Writes curves.csv, curves.json and figure{3,4,9}.png to --out and prints a table of final and
minimum metric values (means over seeds) per method. torch and matplotlib are imported only when
the command runs, so `npo --help` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

from npo.errors import NpoError

QUICK = {"seeds": 2, "pretrain_steps": 4000, "figure3_steps": 2000}
DEFAULTS = {"seeds": 5, "pretrain_steps": 20_000, "figure3_steps": 10_000}
MAX_SEEDS = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alpha", type=int, choices=(0, 1), default=1,
                        help="covariate shift between forget and retain sets (Table 1 settings exist for 0 and 1)")
    parser.add_argument("--seeds", type=int, default=None, help=f"number of seeds (default {DEFAULTS['seeds']})")
    parser.add_argument("--seed", type=int, default=0, help="first seed; runs use seed, seed+1, ... (default 0)")
    parser.add_argument("--steps", type=int, default=2000, help="unlearning steps (default 2000)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help=f"GD steps for the reference and retrained models (default {DEFAULTS['pretrain_steps']})")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between evaluations (default 25)")
    parser.add_argument("--figure3-steps", type=int, default=None,
                        help=f"steps of the β sweep of Figure 3 (default {DEFAULTS['figure3_steps']})")
    parser.add_argument("--no-figure3", action="store_true", help="skip the β sweep (Figure 3)")
    parser.add_argument("--no-alpha0", action="store_true",
                        help="skip the α = 0 study that Figure 4 shows in its last panel")
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic"), help="output folder")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object of final metrics per method to stdout (table goes to stderr)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test sizes: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                        + " (explicit options win)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the matrices are small, and extra threads only "
                             "help on an idle machine; on a busy one they slow the run down many times)")


def _resolve(args: argparse.Namespace) -> dict:
    """Fill --quick/default sizes and reject bad values with a message naming the option."""
    base = QUICK if args.quick else DEFAULTS
    cfg = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    cfg |= {"alpha": args.alpha, "seed": args.seed, "steps": args.steps, "eval_every": args.eval_every,
            "figure3": not args.no_figure3, "alpha0": not args.no_alpha0 and args.alpha != 0}
    for key in ("seeds", "steps", "pretrain_steps", "eval_every", "figure3_steps"):
        if cfg[key] < 1:
            raise NpoError(f"--{key.replace('_', '-')} must be at least 1, got {cfg[key]}")
    if cfg["seeds"] > MAX_SEEDS:
        raise NpoError(f"--seeds must be at most {MAX_SEEDS}, got {cfg['seeds']}")
    if args.threads < 1:
        raise NpoError(f"--threads must be at least 1, got {args.threads}")
    if args.out.exists() and not args.out.is_dir():
        raise NpoError(f"--out {args.out} exists and is not a folder")
    return cfg


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _curve_records(study: str, curves) -> list[dict]:
    """One record per (method, metric): mean/std/min/max over seeds at every evaluated step."""
    out = []
    for metric in curves.metrics:
        summ = curves.summary(metric)
        for j, m in enumerate(curves.methods):
            out.append({"study": study, "alpha": curves.alpha, "method": m.name, "lr": m.lr, "beta": m.beta,
                        "metric": metric, "steps": curves.steps.tolist(),
                        **{k: v[:, j].tolist() for k, v in summ.items()}})
    return out


def _write_csv(path: Path, records: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "alpha", "method", "step", "metric", "mean", "std", "min", "max"])
        for r in records:
            for i, step in enumerate(r["steps"]):
                w.writerow([r["study"], r["alpha"], r["method"], step, r["metric"],
                            *(f"{r[k][i]:.6g}" for k in ("mean", "std", "min", "max"))])


def _finals(curves) -> dict[str, dict]:
    """Final and minimum (over steps) of the seed-mean curves, per method."""
    out = {}
    for j, name in enumerate(curves.names):
        row = {}
        for metric in curves.metrics:
            mean = curves.summary(metric)["mean"][:, j]
            i = int(mean.argmin())
            row |= {metric: float(mean[-1]), f"min_{metric}": float(mean[i]),
                    f"min_{metric}_step": int(curves.steps[i])}
        out[name] = row
    return out


def _table(title: str, finals: dict[str, dict]) -> str:
    head = f"{'method':<12}{'forget dist':>12}{'min (step)':>18}{'retain dist':>13}{'min (step)':>18}{'forget KL':>11}"
    lines = [title, head, "-" * len(head)]
    for name, r in finals.items():
        lines.append(f"{name:<12}{r['forget_distance']:>12.4f}"
                     f"{r['min_forget_distance']:>10.4f} ({r['min_forget_distance_step']:>5})"
                     f"{r['retain_distance']:>13.4f}"
                     f"{r['min_retain_distance']:>10.4f} ({r['min_retain_distance_step']:>5})"
                     f"{r['forget_kl']:>11.3f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    cfg = _resolve(args)
    import torch

    from npo.synthetic import experiment as syn
    from npo.synthetic import plots

    torch.set_num_threads(args.threads)
    seeds = list(range(cfg["seed"], cfg["seed"] + cfg["seeds"]))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def run(alpha: int, figure3: bool):
        data = syn.make_data(alpha, seeds)
        _log(f"α={alpha}: pre-training reference and retrained models ({len(seeds)} seeds × "
             f"{cfg['pretrain_steps']} steps) ...")
        models = syn.pretrain(data, cfg["pretrain_steps"])
        worst = float(models.grad_norm.max())
        _log(f"α={alpha}: done at {time.perf_counter() - t0:.1f}s, largest final gradient norm {worst:.2g}")
        _log(f"α={alpha}: unlearning, 8 methods × {len(seeds)} seeds × {cfg['steps']} steps ...")
        curves = syn.unlearn(data, models, syn.table1_methods(alpha), cfg["steps"], cfg["eval_every"])
        sweep = None
        if figure3:
            _log(f"α={alpha}: Figure 3 β sweep, {cfg['figure3_steps']} steps ...")
            sweep = syn.unlearn(data, models, syn.beta_sweep_methods(), cfg["figure3_steps"], cfg["eval_every"])
        _log(f"α={alpha}: done at {time.perf_counter() - t0:.1f}s")
        return curves, sweep, worst

    main_curves, sweep, grad_main = run(cfg["alpha"], cfg["figure3"])
    alpha0, grad0 = None, None
    if cfg["alpha0"]:
        alpha0, _, grad0 = run(0, False)

    records = _curve_records("table1", main_curves)
    if alpha0 is not None:
        records += _curve_records("table1", alpha0)
    if sweep is not None:
        records += _curve_records("figure3", sweep)
    if not all(math.isfinite(x) for r in records for k in ("mean", "min", "max") for x in r[k]):
        raise NpoError("non-finite metric values; lower the learning rates or steps")
    _write_csv(out / "curves.csv", records)
    config = {**cfg, "seeds": seeds, "spread": "std (population) and min/max over seeds",
              "pretrain_final_grad_norm_max": {"main": grad_main, "alpha0": grad0}}
    (out / "curves.json").write_text(json.dumps({"config": config, "curves": records}) + "\n")

    figs = [plots.figure4(main_curves, alpha0, out / "figure4.png"),
            plots.figure9([c for c in (main_curves, alpha0) if c is not None], out / "figure9.png")]
    if sweep is not None:
        figs.append(plots.figure3(sweep, out / "figure3.png"))

    finals = {f"alpha{cfg['alpha']}": _finals(main_curves)}
    if alpha0 is not None:
        finals["alpha0"] = _finals(alpha0)
    report = "\n\n".join(_table(f"α = {k[5:]} ({len(seeds)} seeds, means; distances = KL to the retrained "
                                f"model)", v) for k, v in finals.items())
    wall = time.perf_counter() - t0
    if args.json:
        _log(report)
        print(json.dumps({"alpha": cfg["alpha"], "seeds": len(seeds), "steps": cfg["steps"],
                          "methods": finals[f"alpha{cfg['alpha']}"], "alpha0": finals.get("alpha0"),
                          "out": str(out), "wall_s": round(wall, 1)}))
    else:
        print(report)
        print(f"\nwrote {out / 'curves.csv'}, {out / 'curves.json'}, " + ", ".join(str(f) for f in figs)
              + f" in {wall:.1f}s")
    return 0
