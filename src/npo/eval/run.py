"""A full TOFU evaluation of one model: load the four eval sets, compute the per-item logs, write
them in the official format, and aggregate them into `summary.json` and `summary.md`."""

from __future__ import annotations

import json
from pathlib import Path

from npo.data.qa import QARecord, load_qa
from npo.errors import NpoError
from npo.eval.logs import LOG_FILES, PROTOCOLS, apply_protocol, load_log_dir, parse_log, write_log_dir
from npo.eval.metrics import METRIC_NAMES, tofu_metrics
from npo.eval.tofu import EVAL_SETS, Dist, evaluate_sets


def load_eval_sets(data: str, forget_split: str, protocol: str) -> dict[str, list[QARecord]]:
    """The four eval sets, cut to the protocol's item count (legacy300: the first 300 of each)."""
    if protocol not in PROTOCOLS:
        raise NpoError(f"unknown protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    keep = PROTOCOLS[protocol]
    sets = {}
    for name, (split, _) in EVAL_SETS.items():
        records = load_qa(data, split.format(forget=forget_split))
        sets[name] = records[:keep] if keep else records
    return sets


def load_retain_logs(retain_logs_dir: str | None, protocol: str, n_forget: int | None = None) -> dict | None:
    """The retain model's forget log; refuses a count that differs from the evaluated forget set."""
    if not retain_logs_dir:
        return None
    retain = apply_protocol(load_log_dir(retain_logs_dir, sets=("forget",)), protocol)
    n = len(retain["forget"])
    if n_forget is not None and n != n_forget:
        hint = " (the published logs hold 300 items: use --protocol legacy300)" if n == 300 else ""
        raise NpoError(f"{retain_logs_dir}: the retain model's forget log has {n} items but the evaluated "
                       f"forget set has {n_forget} under protocol '{protocol}'{hint}")
    return retain


def summarize(logs: dict, retain: dict | None, protocol: str, identity: dict) -> dict:
    return {"protocol": protocol, **tofu_metrics(logs, retain), **identity}


def summary_markdown(summary: dict) -> str:
    fq = summary["forget_quality"]
    fq_text = f"{fq:.4g}" if fq is not None else f"n/a ({summary.get('forget_quality_reason')})"
    rows = ["| set | Probability | ROUGE-L recall | Truth Ratio |", "|---|---|---|---|"]
    for s in ("retain", "real_authors", "world_facts", "forget"):
        rows.append(f"| {s} | {summary[f'{s}_prob']:.4f} | {summary[f'{s}_rouge']:.4f} | "
                    f"{summary[f'{s}_truth_ratio']:.4f} |")
    items = ", ".join(f"{k} {v}" for k, v in summary["items"].items())
    return "\n".join([
        f"**Model Utility** {summary['model_utility']:.4f} · **Forget Quality** {fq_text} · "
        f"protocol `{summary['protocol']}` ({items})", "", *rows, ""])


def evaluate_model(model, tok, *, data: str, forget_split: str, template: str, out: Path,
                   protocol: str = "full", retain_logs: str | None = None, max_new_tokens: int = 200,
                   batch_size: int = 16, max_length: int = 512, identity: dict | None = None,
                   dist: Dist | None = None) -> dict | None:
    """Evaluate, write the official logs + summary into `out` (main process), return the summary."""
    dist = dist or Dist()
    sets = load_eval_sets(data, forget_split, protocol)
    retain = load_retain_logs(retain_logs, protocol, len(sets["forget"]))  # fail before the slow part
    raw = evaluate_sets(model, tok, template, sets, max_length=max_length, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, dist=dist)
    if dist.rank != 0:
        return None
    logs = {name: parse_log(log, source=f"{out}/{LOG_FILES[name]}") for name, log in raw.items()}
    identity = {"data": str(data), "forget_split": forget_split, "template": template, **(identity or {})}
    out.mkdir(parents=True, exist_ok=True)
    write_log_dir(logs, out)
    summary = summarize(logs, retain, protocol, {**identity, "retain_logs": retain_logs})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


__all__ = ["METRIC_NAMES", "evaluate_model", "load_eval_sets", "load_retain_logs", "summarize", "summary_markdown"]
