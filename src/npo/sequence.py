"""Deletion requests one after another (MUSE's sustainability) or each on its own (its scalability).

`chain`: request k unlearns its forget set starting from request k-1's final model, so NPO's
reference is that model (its log-probs are cached from the model a run starts from), as MUSE's
sustainability runs start each fold from the previous fold's checkpoint. `independent`: every
request starts from the original model, as MUSE's scalability runs unlearn each nested `scal`
set from the target.

Each request is an ordinary unlearning run in `OUT/request_k/` whose `parent.json` records the
request, the model it started from and the previous run directory, so an audit can link them. Each
final model (and, first, the starting model) is evaluated with the run's `eval_benchmark`; the
numbers go into `sequence.json`, `sequence.md` (a table) and `sequence.png` (one panel per
benchmark curve, against the request). Rerunning the same command reuses finished requests and
resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from npo.checkpoint import DONE_MARKER, RUN_MARKER
from npo.config import TrainConfig, validate
from npo.errors import NpoError

log = logging.getLogger("npo")

MODES = {"chain": "each request starts from the previous request's model (MUSE's sustainability)",
         "independent": "each request starts from the original model (MUSE's scalability)"}
PARENT = "parent.json"


def _check_inputs(cfg: TrainConfig, forgets: list[str], evaluate: bool) -> None:
    """Every forget set and the retain set load, and the benchmark is known, before anything is written."""
    from npo.data.sets import load_sets
    from npo.data.templates import default_template
    from npo.eval import benchmarks
    from npo.methods import METHODS
    from npo.modeling import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.gguf_file, cfg.trust_remote_code)
    template = cfg.template or default_template(tok)
    for forget in forgets:
        load_sets(dataclasses.replace(cfg, forget=forget), METHODS[cfg.method], tok, template)
    if evaluate:
        benchmarks.load(cfg.eval_benchmark)
        if not (cfg.eval_data or cfg.data):
            raise NpoError("evaluating the requests needs 'eval_data' (or 'data'): the benchmark's data directory")


def _evaluate(cfg: TrainConfig, model_dir: str, out: Path, identity: dict) -> dict | None:
    import torch

    from npo.data.templates import default_template
    from npo.eval import benchmarks
    from npo.eval.scoring import Dist
    from npo.modeling import choose_dtype, load_model, load_tokenizer, match_vocab
    from npo.runtime import make_accelerator

    if (out / "summary.json").exists():  # a finished evaluation of this very model is reused
        summary = json.loads((out / "summary.json").read_text())
        if summary.get("model") == model_dir:
            return summary
    acc = make_accelerator()
    dtype, _, _ = choose_dtype("auto", acc.device.type)
    tok = load_tokenizer(model_dir, None, cfg.trust_remote_code)
    model = load_model(model_dir, dtype, None, cfg.trust_remote_code).to(acc.device)
    match_vocab(model, tok)
    spec = benchmarks.EvalSpec(
        data=cfg.eval_data or cfg.data, template=cfg.template or default_template(tok),
        forget_split=cfg.eval_forget_split, retain_logs=cfg.eval_retain_logs, protocol=cfg.eval_protocol,
        max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size, max_length=cfg.max_length,
        identity={"model": model_dir, **identity})
    bench = benchmarks.load(cfg.eval_benchmark)
    with torch.no_grad():
        summary = bench.evaluate(model, tok, spec, out, Dist.from_accelerator(acc))
    if summary is not None:
        log.info("%s: %s", identity.get("request", "start"), bench.headline(summary))
    return summary


def _unlearn(cfg: TrainConfig, parent: dict, run_dir: Path) -> None:
    """Run one request, or reuse / resume the one already in run_dir when it is the same request."""
    import npo

    parent_path = run_dir / PARENT
    same = parent_path.exists() and json.loads(parent_path.read_text()) == parent
    if same and (run_dir / DONE_MARKER).exists():
        log.info("request %d: reusing the finished run in %s", parent["request"], run_dir)
        return
    if (run_dir / RUN_MARKER).exists() and not same and not cfg.overwrite:
        raise NpoError(f"{run_dir} holds a run of another request; pass --overwrite to replace it")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "benchmark", ignore_errors=True)  # it evaluated the model this run replaces
    tmp = parent_path.with_name(PARENT + ".tmp")
    tmp.write_text(json.dumps(parent, indent=1) + "\n")
    tmp.replace(parent_path)
    resume = same and (run_dir / RUN_MARKER).exists()
    npo.unlearn(dataclasses.replace(cfg, forget=parent["forget"], model=parent["start_model"], out=str(run_dir)),
                resume=resume)


def run_sequence(cfg: TrainConfig, forgets: list[str], out: str | Path, mode: str = "chain",
                 evaluate: bool = True) -> Path:
    """Unlearn `forgets` as successive requests; returns the folder holding the table."""
    from npo.runtime import setup_logging

    setup_logging()
    validate(cfg)
    if mode not in MODES:
        raise NpoError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    if not forgets:
        raise NpoError("a sequence needs at least one forget set")
    _check_inputs(cfg, forgets, evaluate)
    out = Path(out)
    rows = []
    if evaluate:
        rows.append({"request": 0, "forget": None, "start_model": cfg.model, "parent_run": None,
                     "run_dir": None, "summary": _evaluate(cfg, cfg.model, out / "start" / "benchmark", {"request": 0})})
    start, previous = cfg.model, None
    for k, forget in enumerate(forgets, start=1):
        run_dir = out / f"request_{k}"
        parent = {"request": k, "requests": len(forgets), "mode": mode, "forget": forget, "start_model": start,
                  "parent_run": previous}
        _unlearn(cfg, parent, run_dir)
        model_dir = str(run_dir / "model")
        summary = (_evaluate(cfg, model_dir, run_dir / "benchmark", {"request": k, "forget": forget})
                   if evaluate else None)
        rows.append({**parent, "run_dir": str(run_dir), "summary": summary})
        previous = str(run_dir)
        start = model_dir if mode == "chain" else cfg.model
    if evaluate and rows[0]["summary"] is None:  # not the main process
        return out
    from npo.eval import benchmarks

    curves = benchmarks.load(cfg.eval_benchmark).CURVES if evaluate else {}
    (out / "sequence.json").write_text(json.dumps({"mode": mode, "method": cfg.method, "requests": rows}, indent=1) + "\n")
    (out / "sequence.md").write_text(table(rows, curves, mode, cfg.method))
    if evaluate:
        plot(rows, curves, out / "sequence.png", f"{cfg.method}, {mode} requests")
    return out


def _cell(summary: dict | None, key: str) -> str:
    if summary is None or summary.get(key) is None:
        return "n/a"
    ci = summary.get(f"{key}_ci")
    return f"{summary[key]:.2f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def table(rows: list[dict], curves: dict, mode: str, method: str) -> str:
    head = ["request", "forget set", "started from", *curves]
    lines = [f"# {method}: {len([r for r in rows if r['request']])} deletion requests ({mode}: {MODES[mode]})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["request"]) if r["request"] else "0 (start)", f"`{r['forget']}`" if r["forget"] else "none",
                 f"`{r['start_model']}`", *(_cell(r["summary"], key) for key, _ in curves.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", "Brackets: 95% bootstrap intervals where the benchmark gives them.", ""])


def plot(rows: list[dict], curves: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["request"] for r in rows]
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False)
    for ax, (label, (key, scale)) in zip(axes[0], curves.items(), strict=True):
        y = [float("nan") if r["summary"] is None or r["summary"].get(key) is None else r["summary"][key] for r in rows]
        ax.plot(x, y, "o-")
        ax.set(xlabel="deletion request (0: start)", ylabel=label, yscale=scale, title=label, xticks=x)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
