"""The offline demo: the whole pipeline on the built-in testbed, on a CPU, in minutes.

Per seed: train a tiny Llama on every testbed person (the target) and another on the retain people
only (the retain model Forget Quality compares against); unlearn the forget split from the target
with each method, evaluating with the TOFU metrics every epoch. Then `report.md` with tables and
plots. Hyper-parameters are fixed here in advance, the same for every method (as in the paper),
never tuned on the test metric.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from npo.config import build
from npo.errors import NpoError
from npo.methods import METHODS
from npo.progress import progress
from npo.testbed.model import MEMORISE_RECIPE

log = logging.getLogger("npo")


@dataclass(frozen=True)
class DemoSettings:
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("npo_rt", "npo", "ga", "ga_rt")
    forget_split: str = "forget10"
    people: int = 40
    questions: int = 20
    data_seed: int = 0
    vocab_size: int = 1024
    model: dict = field(default_factory=dict)  # tiny_llama_config overrides
    target_epochs: int = MEMORISE_RECIPE["epochs"]
    target_lr: float = MEMORISE_RECIPE["lr"]
    target_batch: int = MEMORISE_RECIPE["batch_size"]
    unlearn_epochs: int = 10  # the paper's recipe (SPEC section 4)
    unlearn_lr: float = 3e-4
    unlearn_batch: int = 8  # 10 steps per epoch on forget10 (80 items), as the paper's 12.5 (400 at batch 32)
    beta: float = 0.1
    max_new_tokens: int = 72  # the longest answer is 65 tokens
    matched_utility: float = 0.8  # "matched utility": checkpoints keeping >= 80% of the target's MU
    probes: bool = True  # membership inference, relearning, quantization, paraphrase (npo probe)
    audit: bool = True  # an npo audit of the first seed's first method (audit.md, npo verify)
    # a study of a given model on given data (npo study); None: the testbed and a tiny Llama per seed
    base_model: str | None = None
    gguf_file: str | None = None
    data: str | None = None  # a TOFU-layout directory
    train_extra: tuple[str, ...] = ("real_authors", "world_facts")  # also learned by target and retain model
    template: str = "qa"
    max_length: int = 128
    eval_batch: int = 64
    protocol: str = "full"  # TOFU's eval protocol (legacy300: its first 300 items and official caps)
    finetune: dict = field(default_factory=dict)  # config overrides of the target and retain fine-tunes
    unlearn: dict = field(default_factory=dict)  # config overrides of every unlearning run


QUICK = DemoSettings(seeds=(0,), methods=("npo_rt", "ga"), people=30, unlearn_epochs=5, audit=False)


def _retain_split(forget_split: str) -> str:
    return f"retain{100 - int(forget_split.removeprefix('forget')):02d}"


def prepare(out: Path, s: DemoSettings) -> tuple[Path, Path | None]:
    """The data and, on the testbed, its tokenizer (shared by every seed)."""
    if s.data:
        return Path(s.data), None
    from npo.testbed.model import tokenizer_corpus, train_tokenizer
    from npo.testbed.people import build_splits, write_testbed

    pct = int(s.forget_split.removeprefix("forget"))
    percents = sorted({p for p in (1, 5, 10) if p * s.people >= 100} | {pct})
    data = write_testbed(out / "data", seed=s.data_seed, n_people=s.people, questions_per_person=s.questions,
                         forget_percents=percents)
    splits = build_splits(s.data_seed, s.people, s.questions, forget_percents=percents)
    tok = train_tokenizer(tokenizer_corpus(splits), vocab_size=s.vocab_size)
    tok.save_pretrained(out / "tokenizer")
    return data, out / "tokenizer"


def init_model(tok_dir: Path, out: Path, seed: int, overrides: dict) -> Path:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from npo.testbed.model import tiny_llama_config

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    LlamaForCausalLM(tiny_llama_config(len(tok), **overrides)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _common(s: DemoSettings, seed: int, data: Path) -> dict:
    return dict(data=str(data), template=s.template, max_length=s.max_length, seed=seed, overwrite=True,
                dtype="float32", eval_max_new_tokens=s.max_new_tokens, eval_batch_size=s.eval_batch,
                eval_protocol=s.protocol)


def train_model(out: Path, data: Path, tok_dir: Path, s: DemoSettings, seed: int, name: str) -> Path:
    """The target (trained on everyone) or the retain model (retain people only; also evaluated, as
    the reference distribution of Forget Quality)."""
    import npo
    from npo.eval.tofu import evaluate_model
    from npo.modeling import load_model, load_tokenizer

    root = out / f"seed{seed}"
    sets = ["full" if name == "target" else _retain_split(s.forget_split), *s.train_extra]
    init = s.base_model or init_model(tok_dir, root / f"init_{name}", seed, s.model)
    t0 = time.time()
    cfg = build(None, {**_common(s, seed, data), "model": str(init), "gguf_file": s.gguf_file, "train": sets,
                       "out": str(root / name), "lr": s.target_lr, "epochs": s.target_epochs,
                       "batch_size": s.target_batch, "warmup_epochs": MEMORISE_RECIPE["warmup_epochs"],
                       "weight_decay": MEMORISE_RECIPE["weight_decay"], **s.finetune})
    model_dir = npo.finetune(cfg) / "model"
    log.info("%s model trained in %.0fs", name, time.time() - t0)
    if name == "retain":
        model, tok = load_model(str(model_dir), torch.float32), load_tokenizer(str(model_dir))
        evaluate_model(model, tok, data=str(data), forget_split=s.forget_split, template=s.template,
                       out=root / "retain" / "eval", max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch,
                       max_length=s.max_length, protocol=s.protocol, identity={"model": str(model_dir)})
    return model_dir


def unlearn_method(out: Path, data: Path, s: DemoSettings, seed: int, method: str) -> Path:
    import npo

    root = out / f"seed{seed}"
    t0 = time.time()
    cfg = build(None, {**_common(s, seed, data), "model": str(root / "target" / "model"), "method": method,
                       "forget": s.forget_split, "retain": _retain_split(s.forget_split), "out": str(root / method),
                       "lr": s.unlearn_lr, "epochs": s.unlearn_epochs, "batch_size": s.unlearn_batch,
                       "beta": s.beta, "warmup_epochs": 1.0, "eval_every_epochs": 1,
                       "eval_retain_logs": str(root / "retain" / "eval"), **s.unlearn})
    run = npo.unlearn(cfg)
    log.info("unlearned with %s and evaluated in %.0fs", method, time.time() - t0)
    if s.probes:
        from npo.probes import run_probes

        t0 = time.time()
        run_probes(run / "model", root / "target" / "model", data, s.forget_split, run / "probes",
                   retain_model_dir=root / "retain" / "model", template=s.template, max_length=s.max_length,
                   max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch, relearn_lr=s.unlearn_lr, relearn_epochs=2,
                   seed=seed, title=method)
        log.info("probed in %.0fs", time.time() - t0)
    if s.audit and seed == s.seeds[0] and method == s.methods[0]:
        from dataclasses import replace as with_values

        from npo.audit import TESTBED, run_audit, write_request

        t0 = time.time()
        request = write_request(run / "request.json", id=f"demo-{s.forget_split}-{method}", data=data,
                                forget_split=s.forget_split)
        audit = run_audit(request, root / "target" / "model", run / "model", run / "audit",
                          retain_model=root / "retain" / "model", overwrite=True,
                          settings=with_values(TESTBED, template=s.template, max_new_tokens=s.max_new_tokens,
                                               max_length=4 * s.max_length))  # its multiple-choice form is long
        log.info("audited in %.0fs: %s (audit %s...)", time.time() - t0, audit["overall"], audit["audit_sha256"][:12])
    return run


def _job(label: str, fn, *args):
    """A worker process runs one job on one thread: small models gain little from a second thread,
    and threads that spin-wait on a busy machine slow everything down. Its lines name the job."""
    from npo.progress import set_log_context
    from npo.runtime import setup_logging

    torch.set_num_threads(1)
    setup_logging()
    set_log_context(label, quiet_progress=True)
    return fn(*args)


def _run_all(jobs: list[tuple], workers: int, bar) -> None:
    """Run (label, fn, *args) jobs, `workers` at a time, advancing the demo's bar as each ends."""
    def done(label: str) -> None:
        bar.set_postfix(finished=label)
        bar.update(1)

    if workers <= 1:
        for label, *job in jobs:
            _job(label, *job)
            done(label)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_job, *job): job[0] for job in jobs}
        for future in as_completed(futures):
            future.result()
            done(futures[future])


def run_demo(out: str | Path, settings: DemoSettings, workers: int | None = None) -> Path:
    """Everything, then the report; returns the report's path. Independent jobs (models of different
    seeds, methods) run in `workers` processes (default: one per CPU core, at most 4)."""
    import os

    from npo.demo.report import write_report
    from npo.runtime import setup_logging

    setup_logging()
    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown:
        raise NpoError(f"unknown method(s) {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    workers = workers or min(4, os.cpu_count() or 1)
    out = Path(out)
    t0 = time.time()
    data, tok_dir = prepare(out, settings)
    models = [(f"seed {seed} {name}", train_model, out, data, tok_dir, settings, seed, name)
              for seed in settings.seeds for name in ("target", "retain")]
    methods = [(f"seed {seed} {method}", unlearn_method, out, data, settings, seed, method)
               for seed in settings.seeds for method in settings.methods]
    bar = progress(len(models) + len(methods), "demo jobs", True, every=1)
    _run_all(models, workers, bar)
    _run_all(methods, workers, bar)
    bar.close()
    elapsed = time.time() - t0
    (out / "settings.json").write_text(json.dumps({**settings.__dict__, "elapsed_s": elapsed, "workers": workers},
                                                  indent=1, default=list))
    return write_report(out, settings, elapsed)


def settings_from_args(quick: bool, methods: str | None, forget_split: str | None, seeds: int | None) -> DemoSettings:
    s = QUICK if quick else DemoSettings()
    if methods:
        s = replace(s, methods=tuple(m.strip() for m in methods.split(",") if m.strip()))
    if forget_split:
        if not (forget_split.startswith("forget") and forget_split[6:].isdigit() and 0 < int(forget_split[6:]) < 100):
            raise NpoError(f"--forget-split must look like forget10, got '{forget_split}'")
        s = replace(s, forget_split=forget_split)
    if seeds is not None:
        if seeds < 1:
            raise NpoError(f"--seeds must be at least 1, got {seeds}")
        s = replace(s, seeds=tuple(range(seeds)))
    return s
