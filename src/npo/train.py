"""The training loop of `npo unlearn` and `npo finetune`, readable top to bottom.

Each optimizer step draws one *window* of forget examples (the effective batch: batch_size x
grad_accum x processes) and a fresh window of retain examples from seeded, length-grouped streams.
Every process draws the same windows and takes its own micro-batches of them, so N processes with
batch B compute the same step as one process with batch N x B. Each micro-batch's loss is scaled
by its share of the window (examples for per-example means, tokens for token means), which makes
gradient accumulation and data parallelism exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from npo import losses
from npo.checkpoint import DONE_MARKER, find_checkpoint, load_checkpoint, prepare_run_dir, save_checkpoint
from npo.config import TrainConfig, save
from npo.data.batches import BatchStream, Tokenized, collate, tokenize_qa
from npo.data.qa import QARecord, load_lines, load_qa
from npo.data.templates import default_template
from npo.errors import DataError, NpoError
from npo.logprobs import Scorer
from npo.modeling import add_lora, choose_dtype, load_model, load_tokenizer, match_vocab, save_model
from npo.reference import OnlineReference, reference_logprobs
from npo.runtime import (
    env_info,
    make_accelerator,
    progress,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_logging,
    write_json,
)

log = logging.getLogger("npo")


# ----------------------------------------------------------------------------- data


def load_set(cfg: TrainConfig, spec: str) -> tuple[list[QARecord], str]:
    """A set given as a file path, `hf:` name, or split name inside `cfg.data`."""
    if spec.startswith("hf:") or Path(spec).exists():
        return load_qa(spec), spec
    if cfg.data:
        return load_qa(cfg.data, spec), f"{cfg.data}/{spec}"
    raise DataError(spec, "no such file (set 'data' to a TOFU-layout directory to use split names)")


def tokenize_set(tok, template: str, records: list[QARecord], source: str, max_length: int,
                 answers: list[str] | None = None) -> list[Tokenized]:
    out = []
    for i, rec in enumerate(records):
        answer = rec.answer if answers is None else answers[i]
        out.append(tokenize_qa(tok, template, rec.question, answer, max_length, where=f"{source}, row {i + 1}"))
    cut = sum(e.truncated for e in out)
    if cut:
        log.info("%s: %d of %d answers truncated to max_length %d", source, cut, len(out), max_length)
    return out


def idk_answers(cfg: TrainConfig, n: int, seed: int) -> list[str]:
    """One refusal per forget example, drawn once by a seeded generator (its reference log-prob is
    cached per example, so the pairing stays fixed)."""
    path = cfg.idk or (str(Path(cfg.data) / "idontknow.jsonl") if cfg.data else None)
    if not path:
        raise NpoError("this method needs 'I don't know' answers: set 'idk' to a file with one per line")
    pool = load_lines(path)
    g = torch.Generator().manual_seed(seed + 7)
    return [pool[i] for i in torch.randint(len(pool), (n,), generator=g).tolist()]


def split_window(window: list[int], parts: int) -> list[list[int]]:
    """Contiguous, near-equal micro-batches (the window is sorted by length, so each is compact)."""
    size, extra = divmod(len(window), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(window[start:end])
        start = end
    return out


# ----------------------------------------------------------------------------- state


@dataclass
class Sets:
    forget: list[Tokenized]
    retain: list[Tokenized] = field(default_factory=list)
    idk: list[Tokenized] = field(default_factory=list)


def linear_schedule(warmup: int, total: int):
    """Linear warm-up to the peak lr over `warmup` steps, then linear decay to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


class _Terms:
    """Backpropagates each loss term of a micro-batch as soon as it is computed, so the forget
    term's graph (activations, logits) is freed before the retain term's forward: the peak holds
    one term's graph, not two. Data-parallel gradients are reduced only in the backward of the
    window's last term (DDP decides that at forward time, hence one context per term). DeepSpeed
    counts backward calls as micro-batches, so there the terms are summed and backpropagated once."""

    def __init__(self, trainer: Trainer, last: bool, n_terms: int):
        self.t, self.last, self.left = trainer, last, n_terms
        self.split = trainer.acc.distributed_type != DistributedType.DEEPSPEED
        self.total, self.pending, self.finite = None, None, True

    @contextlib.contextmanager
    def context(self):
        """Around one term's forward (and, when split, its backward)."""
        t, self.left = self.t, self.left - 1
        sync = self.last and (self.left == 0 or not self.split)
        no_sync = t.acc.no_sync(t.scorer) if not sync and t.world > 1 else contextlib.nullcontext()
        with t.acc.autocast(), no_sync:
            yield

    def add(self, term: torch.Tensor) -> None:
        self.finite = self.finite and bool(torch.isfinite(term))
        self.total = term.detach() if self.total is None else self.total + term.detach()
        # DDP averages gradients over processes; the window shares already sum to one
        if self.split:
            self.t.acc.backward(term * self.t.world)
        else:
            self.pending = term if self.pending is None else self.pending + term

    def finish(self) -> torch.Tensor:
        if self.pending is not None:
            self.t.acc.backward(self.pending * self.t.world)
        return self.total


class Trainer:
    def __init__(self, cfg: TrainConfig, task: str, resume: bool = False, eval_hook=None):
        setup_logging()
        self.cfg, self.task, self.eval_hook = cfg, task, eval_hook
        self.method = losses.METHODS[cfg.method] if task == "unlearn" else None
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype, autocast, reason = choose_dtype(cfg.dtype, device_type, trains_all_weights=not cfg.lora_r)
        self.acc = make_accelerator(autocast)
        self.main = self.acc.is_main_process
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        seed_everything(cfg.seed)
        self.env = {**env_info(cfg.seed, self.acc.device, self.dtype, reason, self.world), "autocast": autocast}
        self._load_data()  # bad data fails before anything is written
        self.run_dir = prepare_run_dir(cfg.out, cfg.overwrite, resume) if self.main else Path(cfg.out)
        self.acc.wait_for_everyone()
        if self.main:
            log.info("dtype %s (%s)", self.env["dtype"], reason)
        self._load_model()

    # -- set-up

    def _load_data(self) -> None:
        cfg = self.cfg
        self.tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.gguf_file, cfg.trust_remote_code)
        self.template = cfg.template or default_template(self.tok)
        if self.task == "finetune":
            if not cfg.train:
                raise NpoError("finetune needs 'train': one or more QA sets")
            examples = []
            for spec in cfg.train:
                records, src = load_set(cfg, spec)
                examples += tokenize_set(self.tok, self.template, records, src, cfg.max_length)
            self.sets = Sets(forget=examples)
        else:
            if not cfg.forget:
                raise NpoError("unlearn needs 'forget': a QA set to forget")
            records, src = load_set(cfg, cfg.forget)
            self.sets = Sets(forget=tokenize_set(self.tok, self.template, records, src, cfg.max_length))
            if self.method.retain:
                if not cfg.retain:
                    raise NpoError(f"method '{cfg.method}' needs 'retain': a QA set to keep")
                r_records, r_src = load_set(cfg, cfg.retain)
                self.sets.retain = tokenize_set(self.tok, self.template, r_records, r_src, cfg.max_length)
            if self.method.idk:
                answers = idk_answers(cfg, len(records), cfg.seed)
                self.sets.idk = tokenize_set(self.tok, self.template, records, src + " (idk)", cfg.max_length,
                                             answers=answers)

    def _load_model(self) -> None:
        cfg = self.cfg
        model = load_model(cfg.model, self.dtype, cfg.gguf_file, cfg.trust_remote_code, cfg.allow_pickle)
        match_vocab(model, self.tok)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if cfg.lora_r:
            if cfg.gradient_checkpointing:
                model.enable_input_require_grads()
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        self.model = model.to(self.acc.device)
        self.model.train()

    # -- the step

    def _batch(self, examples: list[Tokenized], idx: list[int]) -> dict:
        return {k: v.to(self.acc.device) for k, v in collate([examples[i] for i in idx], self.tok.pad_token_id).items()}

    def _logp(self, batch: dict):
        return self.scorer(batch, "full" if self.cfg.logits == "full" else "logp")

    def _ref_logp(self, key: str, examples: list[Tokenized], idx: list[int], batch: dict) -> torch.Tensor:
        if self.online is not None and self.cfg.reference == "online":
            return self.online.logprobs(batch)
        return self.cache[key][idx].to(self.acc.device)

    def micro_backward(self, f_idx: list[int], r_idx: list[int], totals: dict, last: bool) -> tuple[torch.Tensor, dict, bool]:
        """Backpropagate one micro-batch's loss, scaled by its share of the window; return the loss,
        its logged parts and whether every term was finite. `last`: the window's last micro-batch of
        this process (where data-parallel gradients are reduced)."""
        cfg, m, sets = self.cfg, self.method, self.sets
        parts: dict[str, torch.Tensor] = {}
        terms = _Terms(self, last, n_terms=2 if m is not None and m.retain else 1)
        if self.task == "finetune":
            with terms.context():
                logp, n = self._logp(self._batch(sets.forget, f_idx))
                loss = losses.nll_loss(logp, n) * (n.sum() / totals["forget_tokens"])
                terms.add(loss)
            return terms.finish(), {"nll": loss.detach()}, terms.finite
        share = len(f_idx) / totals["forget_examples"]
        with terms.context():
            if m.forget == "idk":
                logp, n = self._logp(self._batch(sets.idk, f_idx))
                forget = losses.nll_loss(logp, n) * (n.sum() / totals["idk_tokens"])
            else:
                fb = self._batch(sets.forget, f_idx)
                logp, n = self._logp(fb)
                parts["forget_logp"] = logp.detach().sum() / totals["forget_examples"]
                if m.forget == "ga":
                    forget = losses.ga_loss(logp, n) * (n.sum() / totals["forget_tokens"])
                elif m.forget == "simnpo":
                    forget = losses.simnpo_loss(logp, n, cfg.beta, cfg.gamma) * share
                elif m.forget == "npo":
                    ref = self._ref_logp("forget", sets.forget, f_idx, fb)
                    forget = losses.npo_loss(logp, ref, cfg.beta) * share
                    parts["npo_weight"] = losses.npo_weight(logp, ref, cfg.beta).sum() / totals["forget_examples"]
                else:  # dpo: the refusal is preferred over the true answer
                    ib = self._batch(sets.idk, f_idx)
                    logp_idk, _ = self._logp(ib)
                    ref = self._ref_logp("forget", sets.forget, f_idx, fb)
                    ref_idk = self._ref_logp("idk", sets.idk, f_idx, ib)
                    forget = losses.dpo_loss(logp_idk, logp, ref_idk, ref, cfg.beta) * share
            parts["forget_loss"] = forget.detach()
            terms.add(cfg.forget_weight * forget)
        if m.retain:
            with terms.context():
                rb = self._batch(sets.retain, r_idx)
                if m.retain == "nll":
                    logp_r, n_r = self._logp(rb)
                    retain = losses.nll_loss(logp_r, n_r) * (n_r.sum() / totals["retain_tokens"])
                else:
                    ref_lp = self.online.log_softmax(rb)
                    retain = losses.kl_loss(ref_lp, self.scorer(rb, "dist")) * (ref_lp.shape[0] / totals["retain_tokens"])
                parts["retain_loss"] = retain.detach()
                terms.add(cfg.retain_weight * retain)
        return terms.finish(), parts, terms.finite

    # -- the loop

    def _prepare(self) -> None:
        cfg = self.cfg
        self.scorer = Scorer(self.model)
        self.online = None
        m = self.method
        if m is not None and (m.online_reference or (cfg.reference == "online" and (m.ref_forget or m.ref_idk))):
            self.online = OnlineReference(self.model, lora=bool(cfg.lora_r), full_logits=cfg.logits == "full")
        self.cache: dict[str, torch.Tensor] = {}
        if m is not None and cfg.reference == "cached" and (m.ref_forget or m.ref_idk):
            t0 = time.time()
            full = cfg.logits == "full"
            with self.acc.autocast():
                if m.ref_forget:
                    self.cache["forget"] = self._reference(self.sets.forget, full)
                if m.ref_idk:
                    self.cache["idk"] = self._reference(self.sets.idk, full)
            if self.main:
                log.info("reference log-probs cached for %d examples in %.1fs", len(self.sets.forget), time.time() - t0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.window = cfg.batch_size * cfg.grad_accum * self.world
        self.steps_per_epoch = math.ceil(len(self.sets.forget) / self.window)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup, self.total_steps))
        self.scorer, self.optimizer = self.acc.prepare(self.scorer, self.optimizer)
        lengths = [len(e.input_ids) for e in self.sets.forget]
        self.forget_stream = BatchStream(lengths, self.window, cfg.seed)
        self.retain_stream = (BatchStream([len(e.input_ids) for e in self.sets.retain], self.window, cfg.seed + 1)
                              if self.sets.retain else None)
        self.step, self.skipped = 0, 0

    def _reference(self, examples: list[Tokenized], full: bool) -> torch.Tensor:
        """Each process scores its shard; the shards are gathered into one per-example tensor."""
        shard = list(range(self.rank, len(examples), self.world))
        local = reference_logprobs(self.model, [examples[i] for i in shard], self.tok.pad_token_id,
                                   self.cfg.eval_batch_size, self.acc.device, full)
        if self.world == 1:
            return local
        from accelerate.utils import gather_object

        pairs = gather_object(list(zip(shard, local.tolist(), strict=True)))
        out = torch.empty(len(examples))
        for i, v in pairs:
            out[i] = v
        return out

    def _totals(self, f_win: list[int], r_win: list[int]) -> dict:
        s = self.sets
        return {"forget_examples": len(f_win),
                "forget_tokens": sum(s.forget[i].n_labels for i in f_win),
                "idk_tokens": sum(s.idk[i].n_labels for i in f_win) if s.idk else 1,
                "retain_tokens": sum(s.retain[i].n_labels for i in r_win) if r_win else 1}

    def train_step(self) -> dict:
        cfg = self.cfg
        f_win = self.forget_stream.next()
        r_win = self.retain_stream.next() if self.retain_stream else []
        totals = self._totals(f_win, r_win)
        parts_f = split_window(f_win, self.world * cfg.grad_accum)
        parts_r = split_window(r_win, self.world * cfg.grad_accum) if r_win else [[]] * len(parts_f)
        mine = range(self.rank * cfg.grad_accum, (self.rank + 1) * cfg.grad_accum)
        logged: dict[str, torch.Tensor] = {}
        finite = True
        for k, j in enumerate(mine):
            if not parts_f[j]:
                continue
            loss, parts, ok = self.micro_backward(parts_f[j], parts_r[j], totals, last=k == cfg.grad_accum - 1)
            finite = finite and ok
            for name, v in {"loss": loss, **parts}.items():
                logged[name] = logged.get(name, 0.0) + v
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
        grad_norm = self.acc.clip_grad_norm_(params, max_norm)
        # DeepSpeed clips inside its engine and reports no norm
        grad_norm = float(grad_norm) if grad_norm is not None else None
        reduced = {k: float(self.acc.reduce(torch.as_tensor(v, device=self.acc.device).float(), "sum"))
                   for k, v in sorted(logged.items())}
        if not (finite and (grad_norm is None or math.isfinite(grad_norm)) and all(math.isfinite(v) for v in reduced.values())):
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite(reduced, grad_norm)
            self.step += 1
            return {"step": self.step, "skipped": True, **reduced, "grad_norm": grad_norm}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "epoch": self.step / self.steps_per_epoch, **reduced,
                "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm}

    def _nonfinite(self, values: dict, grad_norm: float | None) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        msg = f"non-finite loss or gradient at step {self.step + 1}: {shown}, grad_norm={grad_norm}"
        self.skipped += 1
        if self.cfg.nonfinite == "stop":
            raise NpoError(msg + "; weights untouched, the last checkpoint is kept "
                           "(nonfinite=skip skips such steps)")
        if self.skipped > self.cfg.max_skipped_steps:
            raise NpoError(msg + f"; {self.skipped} steps skipped, more than max_skipped_steps")
        log.warning("%s; step skipped (%d so far)", msg, self.skipped)

    # -- checkpoints

    def _state(self) -> dict:
        return {"step": self.step, "skipped": self.skipped, "forget_stream": self.forget_stream.state(),
                "retain_stream": self.retain_stream.state() if self.retain_stream else None}

    def save_checkpoint(self) -> None:
        self.acc.wait_for_everyone()
        if self.main:
            save_checkpoint(self.run_dir, self.acc.unwrap_model(self.scorer).model, self.optimizer,
                            self.scheduler, self._state(), rng_state(), self.cache)
        self.acc.wait_for_everyone()

    def restore(self) -> None:
        path = find_checkpoint(self.run_dir)
        if path is None:
            log.info("no checkpoint in %s: starting from the beginning", self.run_dir)
            return
        model = self.acc.unwrap_model(self.scorer).model
        state, rng, cache = load_checkpoint(path, model, self.optimizer, self.scheduler)
        self.step, self.skipped = state["step"], state["skipped"]
        self.forget_stream.load_state(state["forget_stream"])
        if self.retain_stream and state["retain_stream"]:
            self.retain_stream.load_state(state["retain_stream"])
        if cache:
            self.cache = cache
        set_rng_state(rng)
        log.info("resumed from %s at step %d of %d", path, self.step, self.total_steps)

    # -- run

    def run(self, resume: bool = False) -> Path:
        cfg = self.cfg
        self._prepare()
        if resume:
            self.restore()
        elif self.main:
            save(cfg, self.run_dir / "config.yaml")
            write_json(self.run_dir / "env.json", self.env)
        metrics_path = self.run_dir / "metrics.jsonl"
        bar = progress(self.total_steps, "steps", self.main, initial=self.step)
        if self.eval_hook and self.step == 0:
            self.eval_hook(self, epoch=0)
        while self.step < self.total_steps:
            record = self.train_step()
            if self.main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4g}")
            at_epoch_end = self.step % self.steps_per_epoch == 0
            epoch = self.step // self.steps_per_epoch
            if self.eval_hook and at_epoch_end and cfg.eval_every_epochs and epoch % cfg.eval_every_epochs == 0:
                self.eval_hook(self, epoch=epoch)
            every = cfg.save_every_steps
            due = (every and self.step % every == 0) or (not every and at_epoch_end)
            if due and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        self.acc.wait_for_everyone()
        if self.main:
            model = self.acc.unwrap_model(self.scorer).model
            save_model(model, self.tok, self.run_dir / "model", merge=cfg.save_merged)
            write_json(self.run_dir / DONE_MARKER, {"steps": self.step, "skipped": self.skipped,
                                                    "model": str(self.run_dir / "model")})
        self.acc.wait_for_everyone()
        return self.run_dir

