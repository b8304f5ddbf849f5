"""`npo metrics LOGDIR`: TOFU aggregates (12 metrics, Model Utility, Forget Quality) from existing logs.

Works on any directory holding the four official TOFU eval logs (ours, TOFU's, or other tools'),
so published results can be re-scored without a GPU.
"""

from __future__ import annotations

import argparse
import json

from npo.eval.logs import LOG_FILES, PROTOCOLS, SET_NAMES, apply_protocol, load_log_dir

_EPILOG = (
    f"LOGDIR holds {', '.join(LOG_FILES.values())}. Forget Quality compares the forget-set truth ratios "
    "with those of a model trained on the retain set only: pass that model's log folder with "
    "--retain-logs (only its eval_log_forget.json is read). Protocol 'full' (default) keeps every item "
    "in the logs; 'legacy300' keeps the first 300 of each set, as TOFU's ds_size=300. The published "
    "leaderboard logs hold 300 items per set already, so both protocols give the same numbers on them; "
    "an evaluation of all 400 forget10 items against them needs --protocol legacy300."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _EPILOG
    parser.add_argument("logdir", metavar="LOGDIR", help="folder with the four TOFU eval logs")
    parser.add_argument("--retain-logs", metavar="DIR", default=None,
                        help="eval logs of the retain-only model (reference for Forget Quality)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="full",
                        help="items kept per set: all (full, default) or the first 300 (legacy300)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _fmt(value: float) -> str:
    """Four decimals, or scientific notation for the tiny p-values Forget Quality often is."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"


def _table(result: dict, args: argparse.Namespace) -> str:
    counts = ", ".join(f"{s} {n}" for s, n in result["items"].items())
    lines = [f"TOFU metrics of {args.logdir}", f"protocol {result['protocol']}; items: {counts}", "",
             f"{'set':<14}{'Probability':>12}{'ROUGE':>10}{'Truth Ratio':>13}"]
    for s in SET_NAMES:
        lines.append(f"{s:<14}{_fmt(result[f'{s}_prob']):>12}{_fmt(result[f'{s}_rouge']):>10}"
                     f"{_fmt(result[f'{s}_truth_ratio']):>13}")
    lines += ["", f"{'Model Utility':<16}{_fmt(result['model_utility'])}"]
    if result["forget_quality"] is None:
        lines.append(f"{'Forget Quality':<16}n/a ({result['forget_quality_reason']})")
    else:
        lines.append(f"{'Forget Quality':<16}{_fmt(result['forget_quality'])}  "
                     f"(vs {args.retain_logs}, {result['retain_forget_items']} items each)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from npo.eval.metrics import tofu_metrics  # scipy loads only when the command runs
    from npo.runtime import setup_logging

    setup_logging(libraries=False)
    logs = apply_protocol(load_log_dir(args.logdir), args.protocol)
    retain = None
    if args.retain_logs is not None:
        retain = apply_protocol(load_log_dir(args.retain_logs, sets=("forget",)), args.protocol)
    result = {"protocol": args.protocol, **tofu_metrics(logs, retain),
              "logdir": str(args.logdir), "retain_logs": args.retain_logs}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_table(result, args))
    return 0
